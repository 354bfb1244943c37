"""The dashboard's door: off without an admin token, a signed session cookie for the token,
CSRF on every form, sign-out, expiry. Over HTTP (httpx) against the gateway app; the flows in
a real browser are in tests/test_dashboard_browser.py."""

import asyncio
import re
from collections.abc import AsyncIterator
from http.cookies import SimpleCookie
from pathlib import Path

import httpx
import pytest
from conftest import gateway_settings
from dashboard_helpers import TOKEN, csrf_of, sign_in
from fastapi import FastAPI
from starlette.responses import Response

from app.dashboard import session as sessions
from app.db import Database
from app.main import create_app

BASE = "http://gateway.test"


async def _app(tmp_path: Path, **overrides: object) -> FastAPI:
    url = f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}"
    db = Database(url)
    await db.migrate()
    await db.dispose()
    return create_app(gateway_settings(url, **overrides), background=False)


@pytest.fixture
async def dashboard(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = await _app(tmp_path, admin_token=TOKEN)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
            yield client


async def test_off_without_an_admin_token(tmp_path: Path) -> None:
    app = await _app(tmp_path)  # no SMMGW_ADMIN_TOKEN
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
            for path in ("/dashboard", "/dashboard/login", "/dashboard/static/dashboard.css"):
                assert (await client.get(path)).status_code == 404, path
            posted = await client.post("/dashboard/login", data={"token": "x" * 40})
            assert posted.status_code == 404
            assert "set-cookie" not in posted.headers
            doc = (await client.get("/openapi.json")).json()
    assert not [p for p in doc["paths"] if p.startswith("/dashboard")]


async def test_never_in_the_documents_when_on(dashboard: httpx.AsyncClient) -> None:
    doc = (await dashboard.get("/openapi.json")).json()
    assert not [p for p in doc["paths"] if p.startswith("/dashboard")]
    assert [p for p in doc["paths"] if p.startswith("/admin")]  # the admin API is on


async def test_pages_ask_for_sign_in_and_the_cookie_is_strict(
    dashboard: httpx.AsyncClient,
) -> None:
    for path in (
        "/dashboard",
        "/dashboard/customers",
        "/dashboard/orders",
        "/dashboard/services/1",
        "/dashboard/ledger",
        "/dashboard/report",
    ):
        answer = await dashboard.get(path)
        assert answer.status_code == 303, path
        assert answer.headers["location"].startswith("/dashboard/login?next=")
    form = await dashboard.get("/dashboard/login")
    done = await dashboard.post(
        "/dashboard/login", data={"csrf": csrf_of(form.text), "token": TOKEN, "next": "/dashboard"}
    )
    assert done.status_code == 303
    cookie_line = done.headers["set-cookie"]
    morsel = SimpleCookie(cookie_line)["smmgw_dashboard"]
    assert morsel["httponly"] and morsel["samesite"] == "strict" and morsel["path"] == "/dashboard"
    assert TOKEN not in cookie_line  # the cookie holds no secret of the gateway
    home = await dashboard.get("/dashboard")
    assert home.status_code == 200 and "Sign out" in home.text
    policy = home.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src" not in policy  # no script at all
    assert home.headers["x-frame-options"] == "DENY"
    assert home.headers["cache-control"] == "no-store"


async def test_a_wrong_token_signs_nobody_in(dashboard: httpx.AsyncClient) -> None:
    form = await dashboard.get("/dashboard/login")
    wrong = await dashboard.post(
        "/dashboard/login",
        data={"csrf": csrf_of(form.text), "token": TOKEN[:-1] + "X", "next": "/dashboard"},
    )
    assert wrong.status_code == 303 and wrong.headers["location"].startswith("/dashboard/login")
    again = await dashboard.get(wrong.headers["location"])
    assert "That is not the admin token." in again.text
    assert (await dashboard.get("/dashboard")).status_code == 303


async def test_sign_in_needs_the_forms_token(dashboard: httpx.AsyncClient) -> None:
    """A page elsewhere cannot sign the browser in with a token of its choosing."""
    await dashboard.get("/dashboard/login")
    for data in ({"token": TOKEN}, {"token": TOKEN, "csrf": "x" * 43}):
        refused = await dashboard.post("/dashboard/login", data=data)
        assert refused.status_code == 403
        assert "set-cookie" not in refused.headers
    assert (await dashboard.get("/dashboard")).status_code == 303


async def test_sign_out_ends_the_session(dashboard: httpx.AsyncClient) -> None:
    csrf = await sign_in(dashboard)
    assert (await dashboard.post("/dashboard/logout", data={})).status_code == 403
    assert (await dashboard.get("/dashboard")).status_code == 200  # still signed in
    out = await dashboard.post("/dashboard/logout", data={"csrf": csrf})
    assert out.status_code == 303 and out.headers["location"] == "/dashboard/login"
    page = await dashboard.get("/dashboard/login")
    assert "Signed out." in page.text
    assert (await dashboard.get("/dashboard")).status_code == 303
    # The signed-out session's token is not the signed-in one's.
    assert csrf_of(page.text) != csrf


async def test_next_stays_on_the_dashboard(dashboard: httpx.AsyncClient) -> None:
    form = await dashboard.get("/dashboard/login?next=https://elsewhere.example/")
    assert 'name="next" value="/dashboard"' in form.text
    done = await dashboard.post(
        "/dashboard/login",
        data={"csrf": csrf_of(form.text), "token": TOKEN, "next": "//elsewhere.example/x"},
    )
    assert done.headers["location"] == "/dashboard"


async def test_a_session_expires(tmp_path: Path) -> None:
    app = await _app(tmp_path, admin_token=TOKEN, dashboard_session_seconds=1)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
            csrf = await sign_in(client)
            await asyncio.sleep(1.2)
            assert (await client.get("/dashboard")).status_code == 303
            assert (await client.post("/dashboard/logout", data={"csrf": csrf})).status_code == 403


async def test_a_cookie_signed_with_another_token_opens_nothing(tmp_path: Path) -> None:
    other = await _app(tmp_path, admin_token="another-admin-token-0123456789abcdef")
    async with other.router.lifespan_context(other):
        transport = httpx.ASGITransport(app=other)
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
            await sign_in(client, "another-admin-token-0123456789abcdef")
            forged = client.cookies.get("smmgw_dashboard")
    ours = await _app(tmp_path / "..", admin_token=TOKEN)
    async with ours.router.lifespan_context(ours):
        transport = httpx.ASGITransport(app=ours)
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
            client.cookies.set("smmgw_dashboard", forged, path="/dashboard")
            assert (await client.get("/dashboard")).status_code == 303
            tampered = re.sub(r"^.", "e", forged)
            client.cookies.set("smmgw_dashboard", tampered, path="/dashboard")
            assert (await client.get("/dashboard")).status_code == 303


async def test_the_stylesheet_is_served_by_the_gateway(dashboard: httpx.AsyncClient) -> None:
    css = await dashboard.get("/dashboard/static/dashboard.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert "http" not in css.text  # no font or image from anywhere else
    assert (await dashboard.get("/dashboard/static/../settings.py")).status_code == 404


async def test_a_page_that_does_not_exist_is_a_page_too(dashboard: httpx.AsyncClient) -> None:
    await sign_in(dashboard)
    for path in ("/dashboard/customers/abc", "/dashboard/orders/0", "/dashboard/orders/99"):
        answer = await dashboard.get(path)
        assert answer.status_code == 404, path
        assert "Not found" in answer.text and "Sign out" in answer.text, path


def test_notices_never_grow_the_cookie_past_what_a_browser_keeps() -> None:
    session = sessions.fresh(signed_in=True)
    for n in range(10):
        session.notify(f"notice {n}: " + "é" * 2000, "error")  # escaped in JSON: 6 bytes each
    response = Response()
    sessions.write(response, session, TOKEN, secure=False)
    cookie = response.headers["set-cookie"]
    assert len(cookie) < 4000
    assert session.notices and session.notices[-1][1].startswith("notice 9")  # the newest stays
