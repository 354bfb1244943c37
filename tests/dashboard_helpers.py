"""Helpers for the dashboard tests: signing in over HTTP (httpx), reading forms' tokens."""

import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import uvicorn

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


@contextmanager
def served(app: Any) -> Iterator[str]:
    """An ASGI app on a real port of 127.0.0.1, in a thread, in real time; yields its base
    URL. A reply the app holds back (the simulator's sim:timeout) cannot stall the shutdown."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
