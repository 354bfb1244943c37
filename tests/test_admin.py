"""The admin API (/admin): the operator's commands over HTTP, on SQLite and PostgreSQL.

Everything goes through the gateway app (httpx's ASGI transport) with the in-process simulator
as its upstream; orders are placed through the panel contract as customers place them. The
admin replies are also compared with the CLI's `--json` output on the same database: one
implementation, two faces.
"""

import asyncio
import json
import os
import re
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import FakeClock, gateway_settings
from fastapi import FastAPI
from typer.testing import CliRunner

from app.cli import app as cli_app
from app.db import Database
from app.main import create_app

TOKEN = "admin-token-for-tests-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BASE = "http://gateway.test"

# Placing an order that times out waits for the whole upstream budget: keep it short.
FAST_TIMEOUTS = {"upstream_timeout_seconds": 0.3, "upstream_connect_timeout_seconds": 0.2}


@pytest.fixture
async def admin_app(db: Database, database_url: str, simulator: FastAPI) -> AsyncIterator[FastAPI]:
    """The gateway with an admin token, the in-process simulator upstream, no loops."""
    settings = gateway_settings(database_url, admin_token=TOKEN, **FAST_TIMEOUTS)
    app = create_app(
        settings, upstream_transport=httpx.ASGITransport(app=simulator), background=False
    )
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def anon(admin_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client with no credentials of its own (customers, attackers, tests of auth)."""
    transport = httpx.ASGITransport(app=admin_app)
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
        yield client


@pytest.fixture
async def admin(admin_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=admin_app)
    async with httpx.AsyncClient(transport=transport, base_url=BASE, headers=AUTH) as client:
        yield client


async def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, (response.status_code, response.text)
    return response.json()


async def refused(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert isinstance(body["detail"], str), body
    return body["detail"]


async def panel(client: httpx.AsyncClient, key: str, action: str, **params: object) -> Any:
    data = {"key": key, "action": action, **{k: str(v) for k, v in params.items()}}
    response = await client.post("/api/v2", data=data)
    assert response.status_code == 200, response.text
    return response.json()


async def new_customer(
    admin: httpx.AsyncClient, name: str = "acme", funds: str | None = "100"
) -> dict[str, Any]:
    created = await ok(await admin.post("/admin/customers", json={"name": name}), 201)
    if funds:
        await ok(
            await admin.post(f"/admin/customers/{created['id']}/topup", json={"amount": funds})
        )
    return created


# Every route, with a body that would be valid: auth must be decided before anything else.
ROUTES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", "/admin/summary", None),
    ("POST", "/admin/customers", {"name": "x"}),
    ("GET", "/admin/customers", None),
    ("GET", "/admin/customers/1", None),
    ("PATCH", "/admin/customers/1", {"disabled": True}),
    ("POST", "/admin/customers/1/keys", None),
    ("GET", "/admin/customers/1/keys", None),
    ("POST", "/admin/keys/abcdef12/revoke", None),
    ("POST", "/admin/customers/1/topup", {"amount": "5"}),
    ("POST", "/admin/customers/1/adjust", {"amount": "-5"}),
    ("GET", "/admin/customers/1/ledger", None),
    ("GET", "/admin/ledger/verify", None),
    ("POST", "/admin/services/sync", None),
    ("GET", "/admin/services", None),
    ("POST", "/admin/services/5/hide", None),
    ("POST", "/admin/services/5/show", None),
    ("PATCH", "/admin/services/5", {"name": "x"}),
    ("PUT", "/admin/services/5/price", {"rate": "9"}),
    ("DELETE", "/admin/services/5/price", None),
    ("GET", "/admin/services/5/offers", None),
    ("PUT", "/admin/services/5/offers", {"provider": "default", "provider_service_id": 5}),
    ("DELETE", "/admin/services/5/offers/default", None),
    ("GET", "/admin/providers", None),
    ("POST", "/admin/providers", {"name": "b", "url": "http://b.test/api/v2", "key": "k"}),
    ("GET", "/admin/provider-balances", None),
    ("GET", "/admin/providers/default", None),
    ("PATCH", "/admin/providers/default", {"low_balance": "5"}),
    ("GET", "/admin/providers/default/balance", None),
    ("GET", "/admin/orders", None),
    ("GET", "/admin/orders/1", None),
    ("POST", "/admin/orders/1/resolve", {"not_placed": True}),
    ("POST", "/admin/sync", None),
    ("GET", "/admin/report", None),
]


async def malformed(client: httpx.AsyncClient, headers: dict[str, str]) -> list[httpx.Response]:
    """Requests FastAPI would refuse with 422 before running any dependency."""
    json_headers = {**headers, "Content-Type": "application/json"}
    return [
        await client.post("/admin/customers", content=b"{not json", headers=json_headers),
        await client.post("/admin/customers", json={"name": 5, "x": 1}, headers=headers),
        await client.get("/admin/orders", params={"limit": "many"}, headers=headers),
        await client.get("/admin/orders/not-a-number", headers=headers),
    ]


def test_the_route_list_covers_every_admin_route() -> None:
    app = create_app(gateway_settings("sqlite:///unused.db", admin_token=TOKEN), background=False)
    documented = [
        (method.upper(), re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", path) + "$"))
        for path, item in app.openapi()["paths"].items()
        if path.startswith("/admin")
        for method in item
    ]
    matched = [
        [i for i, (m, pattern) in enumerate(documented) if m == method and pattern.match(path)]
        for method, path, _ in ROUTES
    ]
    assert all(len(found) == 1 for found in matched), matched
    assert sorted(i for [i] in matched) == list(range(len(documented)))


# --- access -------------------------------------------------------------------------------------


async def test_off_when_no_token_is_set(client: httpx.AsyncClient) -> None:
    """`client` talks to the conftest gateway, which has no SMMGW_ADMIN_TOKEN."""
    for method, path, body in ROUTES:
        for headers in ({}, AUTH, {"Authorization": "Bearer "}):
            response = await client.request(method, path, json=body, headers=headers)
            assert response.status_code == 404, (method, path, response.text)
            assert "www-authenticate" not in response.headers
    for response in await malformed(client, AUTH):
        assert response.status_code == 404, response.text
    assert (await client.get("/healthz")).status_code == 200


async def test_a_blank_token_is_off_too(db: Database, database_url: str) -> None:
    app = create_app(gateway_settings(database_url, admin_token="   "), background=False)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as c:
            response = await c.get("/admin/summary", headers={"Authorization": "Bearer    "})
            assert response.status_code == 404


@pytest.mark.parametrize("token", ["", "   "])
def test_the_documents_leave_out_an_admin_api_that_is_off(token: str) -> None:
    """/openapi.json (and so /docs and /redoc, which render it) list no /admin endpoint."""
    doc = create_app(gateway_settings("sqlite:///unused.db", admin_token=token)).openapi()
    assert doc["paths"] and not [p for p in doc["paths"] if p.startswith("/admin")]
    assert "AdminToken" not in doc.get("components", {}).get("securitySchemes", {})
    assert "/admin" not in json.dumps(doc)


async def test_a_wrong_or_missing_token_is_401(
    anon: httpx.AsyncClient, admin: httpx.AsyncClient
) -> None:
    customer = await new_customer(admin)
    wrong = [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Bearer {TOKEN[:-1]}"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": TOKEN},
        # A valid customer API key never opens the admin API.
        {"Authorization": f"Bearer {customer['key']}"},
    ]
    for headers in wrong:
        for method, path, body in ROUTES:
            response = await anon.request(method, path, json=body, headers=headers)
            assert response.status_code == 401, (headers, method, path, response.text)
            assert response.headers["www-authenticate"] == "Bearer"
            assert customer["key"] not in response.text
    # Decided before the request is even parsed: a stranger learns nothing from a bad body.
    for headers in ({}, {"Authorization": f"Bearer {customer['key']}"}):
        for response in await malformed(anon, headers):
            assert response.status_code == 401, response.text
    # Nor as the contract's `key` parameter.
    response = await anon.get("/admin/customers", params={"key": customer["key"]})
    assert response.status_code == 401
    # Nothing happened: still one customer, and its balance untouched.
    listed = await ok(await admin.get("/admin/customers"))
    assert [(c["name"], c["balance"], c["disabled"]) for c in listed] == [("acme", "100.00", False)]
    # The right token, with the scheme in any case, opens it.
    lower = {"Authorization": f"bearer {TOKEN}"}
    assert (await anon.get("/admin/summary", headers=lower)).status_code == 200


# --- customers and keys -------------------------------------------------------------------------


async def test_customers_and_keys(admin: httpx.AsyncClient, anon: httpx.AsyncClient) -> None:
    created = await ok(
        await admin.post(
            "/admin/customers",
            json={"name": "acme", "markup_percent": "25", "dialect": "smartpanel"},
        ),
        201,
    )
    assert created["id"] == 1 and len(created["key"]) == 64
    assert created["prefix"] == created["key"][:8]
    assert (created["markup_percent"], created["dialect"], created["balance"]) == (
        "25",
        "smartpanel",
        "0.00",
    )
    assert created["created_at"].endswith("Z")
    balance = await panel(anon, created["key"], "balance")
    assert balance["balance"] == "0.0000"  # smartpanel: 4 decimals; the key works at once

    plain = await ok(await admin.post("/admin/customers", json={"name": "bob"}), 201)
    assert (plain["markup_percent"], plain["dialect"]) == (None, "standard")
    detail = await refused(await admin.post("/admin/customers", json={"name": "bob"}), 400)
    assert "exists already" in detail
    for bad in (
        {"name": "x", "markup_percent": "-1"},
        {"name": "x", "markup_percent": "1.234"},
        {"name": ""},
        {"name": "x", "dialect": "klingon"},
        {"name": "x", "extra": 1},
    ):
        assert (await admin.post("/admin/customers", json=bad)).status_code == 422, bad

    # Reads never carry a key, not even beyond the prefix.
    issued = await ok(await admin.post("/admin/customers/acme/keys"), 201)
    assert issued["customer_id"] == 1 and issued["prefix"] == issued["key"][:8]
    reads = [
        await admin.get("/admin/customers"),
        await admin.get("/admin/customers/1"),
        await admin.get("/admin/customers/acme"),
        await admin.get("/admin/customers/1/keys"),
    ]
    for response in reads:
        assert response.status_code == 200
        for key in (created["key"], issued["key"]):
            assert key not in response.text and key[8:16] not in response.text
    shown = reads[1].json()
    assert reads[2].json() == shown
    assert [k["prefix"] for k in shown["keys"]] == [created["prefix"], issued["prefix"]]
    assert [c["name"] for c in reads[0].json()] == ["acme", "bob"]

    changed = await ok(
        await admin.patch(
            "/admin/customers/1",
            json={"name": "acme2", "markup_percent": "12.5", "dialect": "standard"},
        )
    )
    assert (changed["name"], changed["markup_percent"], changed["dialect"]) == (
        "acme2",
        "12.5",
        "standard",
    )
    untouched = await ok(await admin.patch("/admin/customers/acme2", json={"disabled": False}))
    assert untouched["markup_percent"] == "12.5"  # an absent field is not a change
    default = await ok(await admin.patch("/admin/customers/1", json={"markup_percent": None}))
    assert default["markup_percent"] is None
    assert "nothing" in await refused(await admin.patch("/admin/customers/1", json={}), 400)
    bad_markup = await admin.patch("/admin/customers/1", json={"markup_percent": "-5"})
    assert bad_markup.status_code == 422

    # Disabling stops every key at once; enabling brings them back.
    await ok(await admin.patch("/admin/customers/1", json={"disabled": True}))
    assert (await panel(anon, issued["key"], "balance")) == {"error": "Invalid API key"}
    await ok(await admin.patch("/admin/customers/1", json={"disabled": False}))
    assert "balance" in await panel(anon, issued["key"], "balance")

    # Revocation by prefix takes effect at once.
    revoked = await ok(await admin.post(f"/admin/keys/{created['prefix']}/revoke"))
    assert revoked == {"prefix": created["prefix"], "revoked": True}
    assert (await panel(anon, created["key"], "balance")) == {"error": "Invalid API key"}
    assert "balance" in await panel(anon, issued["key"], "balance")
    keys = {k["prefix"]: k for k in await ok(await admin.get("/admin/customers/1/keys"))}
    assert keys[created["prefix"]]["revoked_at"] is not None
    assert keys[issued["prefix"]]["revoked_at"] is None
    again = await admin.post(f"/admin/keys/{created['prefix']}/revoke")
    assert "no live key" in await refused(again, 404)

    for path in ("/admin/customers/42", "/admin/customers/nobody/keys"):
        assert (await refused(await admin.get(path), 404)).startswith("no customer")
    assert await refused(await admin.post("/admin/customers/42/keys"), 404) == "no customer 42"
    patch = await admin.patch("/admin/customers/42", json={"disabled": True})
    assert await refused(patch, 404) == "no customer 42"


# --- ledger -------------------------------------------------------------------------------------


async def test_ledger(admin: httpx.AsyncClient, anon: httpx.AsyncClient) -> None:
    customer = await new_customer(admin, funds=None)
    topped = await ok(
        await admin.post("/admin/customers/acme/topup", json={"amount": "100", "memo": "paid"})
    )
    assert topped == {
        "customer_id": 1,
        "amount": "100.00",
        "balance": "100.00",
        "currency": "USD",
        "entry_id": 1,
        "ref": None,
        "duplicate": False,
    }
    adjusted = await ok(await admin.post("/admin/customers/1/adjust", json={"amount": "-5.5"}))
    assert adjusted["balance"] == "94.50"
    tiny = await ok(await admin.post("/admin/customers/1/adjust", json={"amount": "0.000001"}))
    assert tiny["balance"] == "94.500001"
    whole = await ok(await admin.post("/admin/customers/1/topup", json={"amount": 5}))
    assert whole["balance"] == "99.500001"
    assert (await panel(anon, customer["key"], "balance"))["balance"] == "99.500001"

    history = await ok(await admin.get("/admin/customers/acme/ledger"))
    assert [(e["kind"], e["amount"]) for e in history] == [
        ("topup", "5.00"),
        ("adjustment", "0.000001"),
        ("adjustment", "-5.50"),
        ("topup", "100.00"),
    ]
    assert history[-1]["memo"] == "paid" and history[-1]["ref"] is None
    assert len(await ok(await admin.get("/admin/customers/1/ledger", params={"limit": 2}))) == 2
    assert (await admin.get("/admin/customers/1/ledger", params={"limit": 0})).status_code == 422
    assert await ok(await admin.get("/admin/ledger/verify")) == {"clean": True, "problems": []}

    negative = await admin.post("/admin/customers/1/topup", json={"amount": "-5"})
    assert "positive" in await refused(negative, 400)
    overdraw = await admin.post("/admin/customers/1/adjust", json={"amount": "-1000"})
    assert "below zero" in await refused(overdraw, 400)
    zero = await admin.post("/admin/customers/1/adjust", json={"amount": "0"})
    assert "zero" in await refused(zero, 400)
    for amount in (12.5, "1.1234567", "abc", "NaN", True, None):
        response = await admin.post("/admin/customers/1/topup", json={"amount": amount})
        assert response.status_code == 422, amount
    unknown = await admin.post("/admin/customers/42/topup", json={"amount": "5"})
    assert await refused(unknown, 404) == "no customer 42"
    assert (await ok(await admin.get("/admin/customers/1")))["balance"] == "99.500001"
    assert await ok(await admin.get("/admin/ledger/verify")) == {"clean": True, "problems": []}


async def test_ledger_verify_reports_problems(admin: httpx.AsyncClient, db: Database) -> None:
    from sqlalchemy import update

    from app.models import Customer

    await new_customer(admin)
    async with db.write() as conn:  # damage the cached balance behind the ledger's back
        await conn.execute(update(Customer).values(balance=Customer.balance + 1))
    report = await ok(await admin.get("/admin/ledger/verify"))
    assert report["clean"] is False
    assert any("customer 1" in line for line in report["problems"])


# --- services -----------------------------------------------------------------------------------


async def test_services(
    admin: httpx.AsyncClient, anon: httpx.AsyncClient, sim_client: httpx.AsyncClient
) -> None:
    assert await ok(await admin.get("/admin/services")) == []
    synced = await ok(await admin.post("/admin/services/sync"))
    assert synced["ok"] is True and synced["services"] > 0 and synced["error"] is None
    listed = await ok(await admin.get("/admin/services"))
    assert len(listed) == synced["services"]
    svc = next(s for s in listed if s["type"] == "Default")
    sid = svc["id"]
    assert svc["price"] == svc["cost"]  # default markup 0
    assert not svc["suspended"] and not svc["hidden"] and svc["upstream_listed"]

    customer = await new_customer(admin)

    async def offered() -> dict[int, dict[str, Any]]:
        return {int(s["service"]): s for s in await panel(anon, customer["key"], "services")}

    assert sid in await offered()
    assert await ok(await admin.post(f"/admin/services/{sid}/hide")) == {
        "service": sid,
        "changed": "hidden",
    }
    assert sid not in await offered()
    await ok(await admin.post(f"/admin/services/{sid}/show"))
    assert sid in await offered()

    renamed = await admin.patch(
        f"/admin/services/{sid}", json={"name": "Followers", "category": "Best"}
    )
    await ok(renamed)
    assert ((await offered())[sid]["name"], (await offered())[sid]["category"]) == (
        "Followers",
        "Best",
    )
    assert "give a name" in await refused(await admin.patch(f"/admin/services/{sid}", json={}), 400)

    below = await admin.put(f"/admin/services/{sid}/price", json={"rate": "0.000001"})
    assert "below" in await refused(below, 400)
    below = await admin.put(f"/admin/services/{sid}/price", json={"markup_percent": "-10"})
    assert "below" in await refused(below, 400)
    priced = await ok(
        await admin.put(
            f"/admin/services/{sid}/price", json={"rate": "0.000001", "allow_below_cost": True}
        )
    )
    assert priced == {
        "service": sid,
        "changed": "fixed rate 0.000001 for every customer without a price of their own:"
        " 1 customer",
        "applies_to": [{"id": 1, "name": "acme"}],
        "not_applied_to": [],
    }
    assert (await offered())[sid]["rate"] == "0.000001"
    mine = await ok(
        await admin.put(
            f"/admin/services/{sid}/price", json={"markup_percent": "100", "customer": "acme"}
        )
    )
    assert mine["changed"] == "markup 100% for customer 1 'acme' only"
    assert mine["applies_to"] == [{"id": 1, "name": "acme"}]
    cost = svc["cost"]
    assert Decimal((await offered())[sid]["rate"]) == Decimal(cost) * 2
    cleared = await ok(await admin.delete(f"/admin/services/{sid}/price", params={"customer": "1"}))
    assert cleared["changed"] == "price rule for customer 1 cleared"
    await ok(await admin.delete(f"/admin/services/{sid}/price"))
    assert "no such price rule" in await refused(
        await admin.delete(f"/admin/services/{sid}/price"), 404
    )
    assert Decimal((await offered())[sid]["rate"]) == Decimal(cost)

    for bad in (
        {},
        {"rate": "1", "markup_percent": "5"},
        {"rate": 1.5},
        {"markup_percent": "1.5%x"},
    ):
        response = await admin.put(f"/admin/services/{sid}/price", json=bad)
        assert response.status_code == 422, bad
    for method, path, body in [
        ("POST", "/admin/services/999/hide", None),
        ("POST", "/admin/services/999/show", None),
        ("PATCH", "/admin/services/999", {"name": "x"}),
        ("PUT", "/admin/services/999/price", {"rate": "1"}),
    ]:
        assert await refused(await admin.request(method, path, json=body), 404) == "no service 999"
    someone = await admin.put(f"/admin/services/{sid}/price", json={"rate": "9", "customer": "42"})
    assert await refused(someone, 404) == "no customer 42"

    # An upstream failure keeps the last good catalog and says so.
    response = await sim_client.post("/_sim/faults", json={"html": 1.0})
    assert response.status_code == 200
    failed = await refused(await admin.post("/admin/services/sync"), 502)
    assert failed.startswith("catalog sync failed") and "sim-test-key" not in failed
    assert len(await ok(await admin.get("/admin/services"))) == synced["services"]
    summary = await ok(await admin.get("/admin/summary"))
    assert summary["catalog"]["last_error"] and summary["catalog"]["synced_at"]


# --- orders -------------------------------------------------------------------------------------


async def place(anon: httpx.AsyncClient, key: str, marker: str, quantity: int = 1000) -> int:
    reply = await panel(
        anon, key, "add", service=5, link=f"https://ig.test/{marker}", quantity=quantity
    )
    assert reply.get("status") == "success", reply
    return int(reply["order"])


async def sim_order_for(sim_client: httpx.AsyncClient, marker: str) -> int:
    orders = (await sim_client.get("/_sim/orders")).json()
    [found] = [o for o in orders if o["params"].get("link") == f"https://ig.test/{marker}"]
    return int(found["id"])


async def test_unknown_orders_are_listed_and_resolved(
    admin: httpx.AsyncClient,
    anon: httpx.AsyncClient,
    sim_client: httpx.AsyncClient,
    clock: FakeClock,
) -> None:
    await ok(await admin.post("/admin/services/sync"))
    customer = await new_customer(admin)
    key = customer["key"]

    # Accepted upstream, then no reply: the order is ours, `unknown`, its funds held.
    lost = await place(anon, key, "sim:complete/sim:timeout")
    await ok(await sim_client.post("/_sim/faults", json={"timeout_after_accept": 1.0}))
    also_lost = await place(anon, key, "sim:cancel/2")
    await ok(await sim_client.post("/_sim/faults", json={}))
    fine = await place(anon, key, "sim:complete")

    summary = await ok(await admin.get("/admin/summary"))
    assert summary["unresolved"] == 2
    assert summary["orders_by_state"] == {"sending": 0, "placed": 1, "rejected": 0, "unknown": 2}
    assert summary["catalog"]["synced_at"] and summary["catalog"]["last_error"] is None

    unknown = await ok(await admin.get("/admin/orders", params={"state": "unknown"}))
    assert [o["id"] for o in unknown] == [also_lost, lost]  # newest first
    every = await ok(await admin.get("/admin/orders"))
    assert [o["id"] for o in every] == [fine, also_lost, lost]
    assert await ok(await admin.get("/admin/orders", params={"customer": "acme", "limit": 1})) == [
        every[0]
    ]
    assert await ok(await admin.get("/admin/orders", params={"state": "rejected"})) == []
    assert (await admin.get("/admin/orders", params={"state": "lost"})).status_code == 422
    missing = await admin.get("/admin/orders", params={"customer": "nobody"})
    assert await refused(missing, 404) == "no customer 'nobody'"

    held = await ok(await admin.get(f"/admin/orders/{lost}"))
    assert (held["state"], held["status"], held["upstream_order_id"]) == (
        "unknown",
        "Pending",
        None,
    )
    assert held["charge"] == held["current_charge"] and held["refunded"] == "0.00"
    assert held["params"]["link"] == "https://ig.test/sim:complete/sim:timeout" and held["error"]
    balance_before = (await ok(await admin.get("/admin/customers/1")))["balance"]

    # It never reached the upstream: refund in full.
    body = {"not_placed": True}
    resolved = await ok(await admin.post(f"/admin/orders/{also_lost}/resolve", json=body))
    assert resolved["state"] == "rejected" and resolved["refunded"] == resolved["charge"]
    assert resolved["current_charge"] == "0.00"
    after = (await ok(await admin.get("/admin/customers/1")))["balance"]
    assert Decimal(after) == Decimal(balance_before) + Decimal(resolved["charge"])
    # It exists upstream: placed under the upstream's id, funds stay charged.
    upstream_id = await sim_order_for(sim_client, "sim:complete/sim:timeout")
    body = {"upstream_order_id": upstream_id}
    placed = await ok(await admin.post(f"/admin/orders/{lost}/resolve", json=body))
    assert (placed["state"], placed["upstream_order_id"]) == ("placed", upstream_id)
    assert (await ok(await admin.get("/admin/summary")))["unresolved"] == 0

    again = await admin.post(f"/admin/orders/{lost}/resolve", json={"not_placed": True})
    assert "only unknown orders resolve" in await refused(again, 400)
    taken = await admin.post(f"/admin/orders/{fine}/resolve", json={"not_placed": True})
    assert "only unknown" in await refused(taken, 400)
    for bad in (
        {},
        {"not_placed": True, "upstream_order_id": 5},
        {"not_placed": False},
        {"upstream_order_id": 0},
    ):
        assert (await admin.post(f"/admin/orders/{lost}/resolve", json=bad)).status_code == 422
    assert await refused(await admin.get("/admin/orders/999"), 404) == "no order 999"
    nothing = await admin.post("/admin/orders/999/resolve", json={"not_placed": True})
    assert await refused(nothing, 404) == "no order 999"

    # A sync pass over HTTP settles them, as `sync --once` would.
    clock.advance(10)
    synced = await ok(await admin.post("/admin/sync"))
    assert (synced["polled"], synced["settled"], synced["failed_batches"]) == (2, 2, 0)
    for order_id in (lost, fine):
        settled = await ok(await admin.get(f"/admin/orders/{order_id}"))
        assert settled["status"] == "Completed" and settled["refreshed_at"] is not None
        assert settled["upstream_charge"] is not None
    assert await ok(await admin.get("/admin/ledger/verify")) == {"clean": True, "problems": []}

    # The report counts what may exist upstream: the two placed orders.
    report = await ok(await admin.get("/admin/report"))
    charges = [
        Decimal((await ok(await admin.get(f"/admin/orders/{i}")))["current_charge"])
        for i in (lost, fine)
    ]
    costs = [
        Decimal((await ok(await admin.get(f"/admin/orders/{i}")))["upstream_charge"])
        for i in (lost, fine)
    ]
    total = report["total"]
    assert total["orders"] == 2
    assert Decimal(total["revenue"]) == sum(charges)
    assert Decimal(total["upstream_cost"]) == sum(costs)
    assert Decimal(total["margin"]) == sum(charges) - sum(costs)
    assert [(line["id"], line["name"], line["orders"]) for line in report["by_customer"]] == [
        (1, "acme", 2)
    ]
    assert [(line["id"], line["orders"]) for line in report["by_service"]] == [(5, 2)]
    assert report["currency"] == "USD" and report["since"] is None
    later = await ok(await admin.get("/admin/report", params={"since": "2999-01-01"}))
    assert later["total"]["orders"] == 0 and later["by_customer"] == []
    assert later["since"] == "2999-01-01T00:00:00Z"
    earlier = await ok(await admin.get("/admin/report", params={"until": "2000-01-01"}))
    assert earlier["total"]["orders"] == 0 and earlier["until"] == "2000-01-02T00:00:00Z"
    backwards = await admin.get(
        "/admin/report", params={"since": "2001-01-02", "until": "2001-01-01"}
    )
    assert "before" in await refused(backwards, 400)
    assert (await admin.get("/admin/report", params={"since": "yesterday"})).status_code == 422


# --- the same JSON as the CLI -------------------------------------------------------------------


async def test_the_cli_prints_the_same_json(
    admin: httpx.AsyncClient,
    anon: httpx.AsyncClient,
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await ok(await admin.post("/admin/services/sync"))
    customer = await new_customer(admin)
    await ok(await admin.post("/admin/customers/1/keys"), 201)
    await place(anon, customer["key"], "sim:timeout")
    await place(anon, customer["key"], "sim:complete")

    for name in list(os.environ):
        if name.startswith("SMMGW_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SMMGW_DATABASE_URL", database_url)
    runner = CliRunner()

    async def cli_json(*args: str) -> Any:
        result = await asyncio.to_thread(runner.invoke, cli_app, [*args, "--json"])
        assert result.exit_code == 0, (args, result.output)
        assert "WARNING: 1 order awaits resolution" in result.stderr  # the timed-out one
        return json.loads(result.stdout)

    pairs = [
        (("customers", "list"), "/admin/customers"),
        (("customers", "show", "acme"), "/admin/customers/1"),
        (("keys", "list", "1"), "/admin/customers/1/keys"),
        (("ledger", "history", "1"), "/admin/customers/1/ledger"),
        (("ledger", "verify"), "/admin/ledger/verify"),
        (("services", "list"), "/admin/services"),
        (("orders", "list"), "/admin/orders"),
        (("orders", "list", "--state", "unknown"), "/admin/orders?state=unknown"),
        (("orders", "show", "1"), "/admin/orders/1"),
        (("report",), "/admin/report"),
        (
            ("report", "--since", "2020-01-01", "--until", "2999-12-31"),
            "/admin/report?since=2020-01-01&until=2999-12-31",
        ),
    ]
    for args, path in pairs:
        assert await cli_json(*args) == await ok(await admin.get(path)), args
    # The CLI's upstream is not this test's in-process simulator: the upstream balance is
    # compared in tests/test_newcomer.py, against a simulator on a port.
    monkeypatch.setenv("SMMGW_UPSTREAM_URL", "http://127.0.0.1:1/api/v1")  # refused at once
    cli_summary = await cli_json("summary")
    api_summary = await ok(await admin.get("/admin/summary"))
    assert cli_summary.pop("upstream")["error"] and api_summary.pop("upstream")["error"] is None
    assert cli_summary == api_summary


# --- the OpenAPI document -----------------------------------------------------------------------


async def test_openapi_documents_the_admin_api(anon: httpx.AsyncClient) -> None:
    doc = await ok(await anon.get("/openapi.json"))
    assert doc["components"]["securitySchemes"]["AdminToken"] == {
        "type": "http",
        "scheme": "bearer",
        "description": doc["components"]["securitySchemes"]["AdminToken"]["description"],
    }
    admin_ops = [
        (path, method, op)
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if path.startswith("/admin")
    ]
    assert len(admin_ops) == len(ROUTES)
    for path, method, op in admin_ops:
        assert op["tags"] == ["admin"], (path, method)
        assert op["security"] == [{"AdminToken": []}], (path, method)
        assert {"401", "404"} <= set(op["responses"]), (path, method)
    others = [
        op
        for path, item in doc["paths"].items()
        if not path.startswith("/admin")
        for op in item.values()
    ]
    assert others and all("security" not in op for op in others)
    assert any(tag.get("name") == "admin" for tag in doc.get("tags", [])) or all(
        op["tags"] == ["admin"] for _, _, op in admin_ops
    )
    money = doc["components"]["schemas"]["PostingResult"]["properties"]["balance"]
    assert money["type"] == "string"
