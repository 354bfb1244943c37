"""Helpers for the dashboard tests: signing in over HTTP (httpx), reading forms' tokens."""

import re

import httpx

TOKEN = "dashboard-admin-token-0123456789abcdef"


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no CSRF token on the page"
    return found[1]


async def sign_in(client: httpx.AsyncClient, token: str = TOKEN) -> str:
    """Sign in through the form, as a browser does; returns the signed-in page's CSRF token."""
    form = await client.get("/dashboard/login")
    assert form.status_code == 200, form.text
    done = await client.post(
        "/dashboard/login", data={"csrf": csrf_of(form.text), "token": token, "next": "/dashboard"}
    )
    assert done.status_code == 303 and done.headers["location"] == "/dashboard", done.text
    home = await client.get("/dashboard")
    assert home.status_code == 200, home.text
    return csrf_of(home.text)
