"""The dashboard's forms over HTTP, on SQLite and PostgreSQL: a POST without the session
cookie, without the CSRF token, with another token or from another origin moves nothing; the
same form done right moves the money once, through the ledger's operations."""

from collections.abc import AsyncIterator

import httpx
import pytest
from conftest import gateway_settings
from dashboard_helpers import TOKEN, sign_in
from fastapi import FastAPI
from helpers import assert_ledger_clean, balance_of, entries_of, new_customer

from app.admin import ops
from app.customers import list_customers
from app.db import Database
from app.main import create_app
from app.orders.queries import get_order

BASE = "http://gateway.test"


@pytest.fixture
async def dashboard_app(
    db: Database, database_url: str, simulator: FastAPI
) -> AsyncIterator[FastAPI]:
    # A short read timeout: an order marked sim:timeout is `unknown` in a fraction of a second.
    settings = gateway_settings(
        database_url,
        admin_token=TOKEN,
        upstream_timeout_seconds=0.3,
        upstream_connect_timeout_seconds=0.2,
    )
    app = create_app(
        settings, upstream_transport=httpx.ASGITransport(app=simulator), background=False
    )
    async with app.router.lifespan_context(app):
        yield app


def _client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE)


async def test_forms_refused_without_the_session_or_its_token(
    dashboard_app: FastAPI, db: Database
) -> None:
    customer = await new_customer(db, "acme")
    topup = f"/dashboard/customers/{customer.id}/topup"
    form = {"amount": "10.00", "ref": "pay-1"}
    async with _client(dashboard_app) as stranger, _client(dashboard_app) as operator:
        csrf = await sign_in(operator)
        # No cookie at all (a stranger; the token of someone else's session does not help).
        assert (await stranger.post(topup, data=form | {"csrf": csrf})).status_code == 403
        # The operator's browser, tricked into posting: no token, another token, another site.
        assert (await operator.post(topup, data=form)).status_code == 403
        assert (await operator.post(topup, data=form | {"csrf": "x" * 43})).status_code == 403
        foreign = {"Origin": "http://evil.example"}
        refused = await operator.post(topup, data=form | {"csrf": csrf}, headers=foreign)
        assert refused.status_code == 403
        created = await operator.post("/dashboard/customers", data={"name": "intruder"})
        assert created.status_code == 403
        assert await balance_of(db, customer) == 0 and await entries_of(db, customer) == []
        assert [c.name for c in await list_customers(db)] == ["acme"]

        done = await operator.post(topup, data=form | {"csrf": csrf})
        assert done.status_code == 303 and done.headers["location"].endswith(str(customer.id))
        again = await operator.post(topup, data=form | {"csrf": csrf})  # the same ref
        assert again.status_code == 303
        shown = (await operator.get(again.headers["location"])).text
        assert "posted before" in shown
    assert await balance_of(db, customer) == 10_000_000
    assert [e.ref for e in await entries_of(db, customer)] == ["topup:pay-1"]
    await assert_ledger_clean(db)


async def test_a_bad_amount_is_shown_and_changes_nothing(
    dashboard_app: FastAPI, db: Database
) -> None:
    customer = await new_customer(db, "acme", funds=5_000_000)
    async with _client(dashboard_app) as operator:
        csrf = await sign_in(operator)
        for amount in ("ten", "1.0000001", "-3", "0", "9" * 30):
            done = await operator.post(
                f"/dashboard/customers/{customer.id}/topup", data={"amount": amount, "csrf": csrf}
            )
            assert done.status_code == 303
            shown = (await operator.get(done.headers["location"])).text
            assert 'class="notice error"' in shown, amount
    assert await balance_of(db, customer) == 5_000_000
    await assert_ledger_clean(db)


async def test_the_key_is_shown_once_and_never_stored_in_the_cookie(
    dashboard_app: FastAPI, db: Database
) -> None:
    async with _client(dashboard_app) as operator:
        csrf = await sign_in(operator)
        made = await operator.post("/dashboard/customers", data={"name": "n1", "csrf": csrf})
        assert made.status_code == 200 and made.headers["cache-control"] == "no-store"
        [customer] = await list_customers(db)
        key = made.text.split('id="api-key">', 1)[1].split("<", 1)[0].strip()
        assert len(key) == 64
        assert key not in (made.headers.get("set-cookie") or "")
        page = (await operator.get(f"/dashboard/customers/{customer.id}")).text
        assert key not in page and key[:8] in page  # afterwards: its prefix only


async def test_a_verdict_given_by_mistake_is_corrected_from_the_order_page(
    dashboard_app: FastAPI, db: Database, sim_client: httpx.AsyncClient
) -> None:
    """`orders resolve --correct`, from the dashboard: not placed (refunded), then found at
    the provider after all: placed, the money taken back by an audited entry with the memo."""
    await ops.sync_catalog(db, dashboard_app.state.gateway.providers)
    customer = await new_customer(db, "acme", funds=50_000_000)
    async with _client(dashboard_app) as operator:
        reply = await operator.post(
            "/api/v2",
            data={
                "key": customer.key,
                "action": "add",
                "service": 5,
                "quantity": 1000,
                "link": "https://ig.test/late/sim:timeout",
            },
        )
        order_id = int(reply.json()["order"])
        assert (await get_order(db, order_id)).state == "unknown"
        [upstream] = [o["id"] for o in (await sim_client.get("/_sim/orders")).json()]
        csrf = await sign_in(operator)
        page = f"/dashboard/orders/{order_id}"

        asked = await operator.get(f"{page}?check=99999999")  # an id the provider never gave
        assert asked.status_code == 200 and "It differs from this order" in asked.text
        asked = await operator.get(f"{page}?check={upstream}")
        assert "It matches this order." in asked.text

        done = await operator.post(f"{page}/resolve", data={"csrf": csrf, "verdict": "not_placed"})
        assert done.status_code == 303
        after = await get_order(db, order_id)
        assert after.state == "rejected" and after.refunded == after.charge
        assert await balance_of(db, customer) == 50_000_000

        corrected = await operator.post(
            f"{page}/resolve",
            data={
                "csrf": csrf,
                "verdict": "placed",
                "upstream_order_id": str(upstream),
                "correct": "1",
                "memo": "found it at the provider",
            },
        )
        shown = (await operator.get(corrected.headers["location"])).text
        assert f"placed as upstream order {upstream}" in shown and "correction:" in shown
    final = await get_order(db, order_id)
    assert final.state == "placed" and final.upstream_order_id == upstream
    assert await balance_of(db, customer) == 50_000_000 - final.charge
    [correction] = [
        e for e in await entries_of(db, customer) if (e.ref or "").startswith("correction:")
    ]
    assert correction.memo and "found it at the provider" in correction.memo
    await assert_ledger_clean(db)
