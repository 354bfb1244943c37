"""The dashboard in a real browser: Playwright driving Debian's /usr/bin/chromium (never a
browser Playwright downloads), with every host but 127.0.0.1 unreachable, against a gateway
served by uvicorn on a port with the simulator, on its own port, as its upstream."""

import json
import os
import queue
import re
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import pytest
from conftest import SIM_KEY, gateway_settings
from dashboard_helpers import TOKEN, served
from playwright.sync_api import Browser, Locator, Page, Route, expect, sync_playwright

from app.main import create_app
from app.simulator import SimConfig, create_simulator_app

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
AUTH = {"Authorization": f"Bearer {TOKEN}"}
T = TypeVar("T")
HEADER_BLUE = "rgb(31, 78, 121)"  # dashboard.css's header: the stylesheet was applied


class Chromium:
    """One headless Chromium for the whole session, driven from a thread of its own.

    Playwright's sync API keeps an event loop running in the thread that started it, and the
    suite's fixtures run theirs (`asyncio.run`, pytest-asyncio) in the main thread: so every
    browser step runs in this thread, handed over by `run`, which returns its result or
    raises what it raised.
    """

    def __init__(self, viewport: dict[str, int] | None = None) -> None:
        self.viewport = viewport or {"width": 1280, "height": 900}
        self._jobs: queue.Queue[tuple[Callable[[Browser], Any], Future[Any]] | None] = queue.Queue()
        self._started: Future[None] = Future()
        self._thread = threading.Thread(target=self._main, name="chromium", daemon=True)
        self._thread.start()
        self._started.result(timeout=60)

    def _main(self) -> None:
        try:
            playwright = sync_playwright().start()
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        except BaseException as exc:
            self._started.set_exception(exc)
            return
        self._started.set_result(None)
        try:
            while (job := self._jobs.get()) is not None:
                step, done = job
                try:
                    done.set_result(step(browser))
                except BaseException as exc:
                    done.set_exception(exc)
        finally:
            browser.close()
            playwright.stop()

    def run(self, step: Callable[[Browser], T]) -> T:
        done: Future[T] = Future()
        self._jobs.put((step, done))
        return done.result(timeout=300)

    def page(self, base_url: str, flow: Callable[[Page], T]) -> T:
        """`flow` on a fresh page (its own cookies) of a browser that reaches 127.0.0.1 only;
        then: nothing was asked of another host, no request failed, no console error."""

        def step(browser: Browser) -> T:
            with open_page(browser, base_url, self.viewport) as (page, watch):
                result = flow(page)
            assert watch.outside == [], "the dashboard asked hosts other than the gateway"
            assert watch.problems == []
            return result

        return self.run(step)

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=30)


def launch() -> Iterator[Chromium]:
    if not Path(CHROMIUM).is_file():
        reason = f"{CHROMIUM} is missing: install Debian's chromium (.ci/run does)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    chromium = Chromium()
    try:
        yield chromium
    finally:
        chromium.close()


@dataclass
class Stack:
    """A served gateway (admin token on) and its simulator, with a plain HTTP client for the
    panel API and the admin API."""

    url: str
    sim_url: str
    http: httpx.Client
    panel_b_url: str  # a second simulator, for a second provider

    def panel(self, key: str, action: str, **params: object) -> object:
        data = {"key": key, "action": action} | {k: str(v) for k, v in params.items()}
        reply = self.http.post("/api/v2", data=data)
        assert reply.status_code == 200, reply.text
        return reply.json()

    def balance(self, key: str) -> str | None:
        """The key's balance as the panel API says it; None when it refuses the key."""
        reply = self.panel(key, "balance")
        assert isinstance(reply, dict)
        return None if "error" in reply else reply["balance"]

    def admin(self, method: str, path: str, **kw: Any) -> Any:
        reply = self.http.request(method, f"/admin{path}", headers=AUTH, **kw)
        assert reply.status_code < 300, (reply.status_code, reply.text)
        return reply.json()

    def customer_with_funds(self, name: str, amount: str) -> tuple[int, str]:
        """A customer made and topped up through the admin API (the dashboard's own forms
        are proven in test_customers_and_money); returns its id and key."""
        made = self.admin("POST", "/customers", json={"name": name, "markup_percent": "20"})
        self.admin("POST", f"/customers/{made['id']}/topup", json={"amount": amount})
        return made["id"], made["key"]

    def default_service(self, key: str) -> dict[str, Any]:
        """A plain service (quantity × rate) from the customer's own `services` list."""
        listing = self.panel(key, "services")
        assert isinstance(listing, list) and listing
        return next(s for s in listing if s["type"] == "Default")

    def sim_services(self) -> dict[int, dict[str, Any]]:
        """The simulator's own catalog, as its API answers it (what the gateway pays)."""
        reply = httpx.post(
            f"{self.sim_url}/api/v1", data={"key": SIM_KEY, "action": "services"}, timeout=10
        )
        return {int(s["service"]): s for s in json.loads(reply.text)}

    def sim_orders(self, sim_url: str | None = None) -> list[dict]:  # type: ignore[type-arg]
        return httpx.get(f"{sim_url or self.sim_url}/_sim/orders", timeout=10).json()

    def verify(self) -> dict:  # type: ignore[type-arg]
        return self.http.get("/admin/ledger/verify", headers=AUTH).json()


PANEL_B_KEY = "panel-b-key"
SECRET_KEY = "a-dashboard-test-secret-of-32-characters"


@contextmanager
def stack_on(database_url: str, **overrides: object) -> Iterator[Stack]:
    # tick: an order stays as placed until a test moves it; a short read timeout makes
    # sim:timeout an `unknown` order quickly. A second simulator (the standard family, a key
    # of its own) stands in for another provider, for the tests that add one.
    sim = create_simulator_app(SimConfig(key=SIM_KEY, tick_seconds=3600.0, seed=1))
    panel_b = create_simulator_app(
        SimConfig(key=PANEL_B_KEY, dialect="standard", tick_seconds=3600.0, seed=2)
    )
    with served(sim) as sim_url, served(panel_b) as panel_b_url:
        values = {
            "upstream_url": f"{sim_url}/api/v1",
            "admin_token": TOKEN,
            "secret_key": SECRET_KEY,
            "upstream_timeout_seconds": 1.0,
            "upstream_connect_timeout_seconds": 1.0,
        } | overrides
        settings = gateway_settings(database_url, **values)
        with served(create_app(settings, background=False)) as url:
            with httpx.Client(base_url=url, timeout=15) as http:
                yield Stack(url, sim_url, http, panel_b_url)


@dataclass
class Watch:
    """What a page asked that it must not have: other hosts, failures, console errors."""

    outside: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


@contextmanager
def open_page(
    browser: Browser, base_url: str, viewport: dict[str, int]
) -> Iterator[tuple[Page, Watch]]:
    context = browser.new_context(base_url=base_url, viewport=viewport)  # type: ignore[arg-type]
    watch = Watch()

    def only_here(route: Route) -> None:
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            watch.outside.append(route.request.url)
            route.abort()

    context.route("**/*", only_here)
    page = context.new_page()
    page.set_default_timeout(15_000)
    page.on(
        "console",
        lambda m: (
            watch.problems.append(f"console {m.type}: {m.text}")
            if m.type in ("error", "warning")
            else None
        ),
    )
    page.on("requestfailed", lambda r: watch.problems.append(f"failed: {r.url}"))
    page.on(
        "response",
        lambda r: watch.problems.append(f"{r.status}: {r.url}") if r.status >= 400 else None,
    )
    try:
        yield page, watch
    finally:
        context.close()


def rendered(page: Page) -> None:
    """The page is whole: loaded, its stylesheet applied, its heading shown."""
    page.wait_for_load_state("load")
    header = page.locator("header.top")
    expect(header).to_have_css("background-color", HEADER_BLUE)
    expect(page.locator("main h1").first).to_be_visible()


def go(page: Page, target: str | Locator) -> None:
    """Click a link or a form's button, and wait for the page it leads to (a form posts, is
    redirected and the next page loads: reading before that would read the old page)."""
    with page.expect_navigation():
        if isinstance(target, str):
            page.click(target)
        else:
            target.click()
    rendered(page)


def sign_in(page: Page, token: str = TOKEN) -> None:
    page.goto("/dashboard")
    expect(page).to_have_url(re.compile(r"/dashboard/login\?next="))
    rendered(page)
    page.fill("input[name=token]", token)
    go(page, "button:has-text('Sign in')")
    page.wait_for_url("**/dashboard")
    rendered(page)


def notice(page: Page) -> str:
    return page.locator("p.notice").first.inner_text()
