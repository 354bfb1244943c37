"""The admin API driven with arbitrary text (hypothesis), on SQLite and PostgreSQL.

Lone surrogates, non-ASCII digits, huge numbers, control characters and long strings go into
every field an operator fills in (names, amounts, markups, rates, memos, refs, ids in paths
and queries, days). Whatever arrives: no 5xx, an error is a `{"detail": …}` body, and the
ledger verifies clean afterwards. The gateway runs in-process (one event loop for all the
examples of a run), with the simulator as its upstream.
"""

import asyncio
import json
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from conftest import SIM_KEY, FakeClock, _truncate_postgres, gateway_settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.catalog import sync_catalog
from app.db import Database
from app.main import create_app
from app.simulator import SimConfig, create_simulator_app

TOKEN = "hypothesis-admin-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}

# Every character, surrogates and controls included; digits from other scripts; numbers far
# beyond any column.
any_char = st.characters(codec=None, categories=None)
hostile_text = st.one_of(
    st.text(any_char, max_size=40),
    st.sampled_from(["¹", "٥", "²", "1e30", "NaN", "-0", "9" * 30, "\udc80", "\x00", " 1 "]),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.text("0123456789٠١٢٣٤٥٦٧٨٩¹²³.-+e", min_size=1, max_size=25),
    st.text(any_char, min_size=190, max_size=260),
)
hostile_value = st.one_of(
    hostile_text,
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
)


def _path(text: str) -> str:
    return quote(text.encode("utf-8", "surrogatepass"), safe="")


def _body(fields: dict[str, Any]) -> bytes:
    # ensure_ascii: a lone surrogate travels as the \\udc80 escape a client would send
    return json.dumps(fields, ensure_ascii=True, allow_nan=True).encode()


requests = st.one_of(
    st.builds(
        lambda name, markup: ("POST", "/admin/customers", {"name": name, "markup_percent": markup}),
        hostile_value,
        hostile_value,
    ),
    st.builds(
        lambda ref, name, markup: (
            "PATCH",
            f"/admin/customers/{_path(ref)}",
            {"name": name, "markup_percent": markup},
        ),
        hostile_text,
        hostile_value,
        hostile_value,
    ),
    st.builds(
        lambda who, kind, amount, memo, ref: (
            "POST",
            f"/admin/customers/{_path(who)}/{kind}",
            {"amount": amount, "memo": memo, "ref": ref},
        ),
        st.one_of(st.just("1"), hostile_text),
        st.sampled_from(["topup", "adjust"]),
        hostile_value,
        hostile_value,
        hostile_value,
    ),
    st.builds(
        lambda rate, markup, customer: (
            "PUT",
            "/admin/services/5/price",
            {"rate": rate, "markup_percent": markup, "customer": customer},
        ),
        hostile_value,
        hostile_value,
        hostile_value,
    ),
    st.builds(
        lambda name, category: ("PATCH", "/admin/services/5", {"name": name, "category": category}),
        hostile_value,
        hostile_value,
    ),
    st.builds(
        lambda order, upstream, memo, flags: (
            "POST",
            f"/admin/orders/{_path(order)}/resolve",
            {"upstream_order_id": upstream, "memo": memo, **flags},
        ),
        st.one_of(st.just("1"), hostile_text),
        hostile_value,
        hostile_value,
        st.fixed_dictionaries(
            {},
            optional={
                "not_placed": hostile_value,
                "force": st.booleans(),
                "correct": st.booleans(),
            },
        ),
    ),
    st.builds(
        lambda since, until: (
            "GET",
            f"/admin/report?since={_path(since)}&until={_path(until)}",
            None,
        ),
        hostile_text,
        hostile_text,
    ),
    st.builds(lambda who: ("GET", f"/admin/customers/{_path(who)}", None), hostile_text),
    st.builds(lambda who: ("GET", f"/admin/orders?customer={_path(who)}", None), hostile_text),
    st.builds(lambda who: ("GET", f"/admin/customers/{_path(who)}/ledger", None), hostile_text),
)


class Gateway:
    """The app started on one event loop; each example sends one request on it."""

    def __init__(self, database_url: str) -> None:
        self.runner = asyncio.Runner()
        self.settings = gateway_settings(database_url, admin_token=TOKEN)
        self.simulator = create_simulator_app(
            SimConfig(key=SIM_KEY, tick_seconds=1.0, seed=1), clock=FakeClock()
        )
        self.runner.run(self._start())

    async def _start(self) -> None:
        db = Database(self.settings.database_url)
        if not db.is_sqlite:
            await _truncate_postgres(db)
        await db.dispose()
        self.app = create_app(
            self.settings,
            upstream_transport=httpx.ASGITransport(app=self.simulator),
            background=False,
        )
        self.lifespan = self.app.router.lifespan_context(self.app)
        await self.lifespan.__aenter__()
        gateway = self.app.state.gateway
        assert (await sync_catalog(gateway.db, gateway.upstream)).ok
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app, raise_app_exceptions=False),
            base_url="http://gateway.test",
            headers=AUTH,
        )
        created = await self.client.post("/admin/customers", content=_body({"name": "acme"}))
        assert created.status_code == 201, created.text
        topped = await self.client.post("/admin/customers/1/topup", content=_body({"amount": "10"}))
        assert topped.status_code == 200, topped.text

    def send(self, method: str, path: str, body: dict[str, Any] | None) -> httpx.Response:
        content = None if body is None else _body(body)
        return self.runner.run(self.client.request(method, path, content=content))

    def close(self) -> None:
        async def stop() -> None:
            await self.client.aclose()
            await self.lifespan.__aexit__(None, None, None)

        self.runner.run(stop())
        self.runner.close()


@pytest.fixture
def gateway(database_url: str) -> Any:
    gw = Gateway(database_url)
    yield gw
    gw.close()


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(request=requests)
def test_arbitrary_operator_input_never_gets_a_server_error(
    gateway: Gateway, request: tuple[str, str, dict[str, Any] | None]
) -> None:
    method, path, body = request
    response = gateway.send(method, path, body)
    assert response.status_code < 500, (method, path, body, response.text)
    if response.status_code >= 400:
        assert response.json()["detail"], response.text
    verified = gateway.send("GET", "/admin/ledger/verify", None)
    assert verified.json() == {"clean": True, "problems": []}, (method, path, body)
