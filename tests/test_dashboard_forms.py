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

from app.customers import list_customers
from app.db import Database
from app.main import create_app

BASE = "http://gateway.test"


@pytest.fixture
async def dashboard_app(
    db: Database, database_url: str, simulator: FastAPI
) -> AsyncIterator[FastAPI]:
    settings = gateway_settings(database_url, admin_token=TOKEN)
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
