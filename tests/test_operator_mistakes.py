# ruff: noqa: F811  (the admin fixtures imported from test_admin are parameters here)
"""Operators' inputs and mistakes (issue 11) through the admin API, on SQLite and PostgreSQL.

Each hostile or mistaken input gets a 4xx with a message and changes nothing; the ledger
verifies clean after every scenario. Amounts are bounded so any balance fits in a BIGINT of
micro-units; a top-up or an adjustment with a ref happens once; a price rule says whom it
reaches; a resolution is checked with the upstream first and can be corrected afterwards.
The upstream is the in-process simulator; orders are placed through the panel contract.
"""

import asyncio
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from test_admin import (  # noqa: F401  (fixtures)
    admin,
    admin_app,
    anon,
    new_customer,
    ok,
    panel,
    place,
    refused,
    sim_order_for,
)

from app import ledger
from app.db import Database
from app.models import Order
from app.money import MAX_AMOUNT, render
from app.orders.resolution import _mismatches
from app.upstream import parse_order_status

BIGGEST = render(MAX_AMOUNT, 0)  # "9000000000000"


async def clean(admin: httpx.AsyncClient) -> None:
    assert await ok(await admin.get("/admin/ledger/verify")) == {"clean": True, "problems": []}


async def entries(admin: httpx.AsyncClient, customer: int | str = 1) -> list[dict[str, Any]]:
    return await ok(await admin.get(f"/admin/customers/{customer}/ledger"))


async def balance(admin: httpx.AsyncClient, customer: int | str = 1) -> Decimal:
    return Decimal((await ok(await admin.get(f"/admin/customers/{customer}")))["balance"])


# --- amounts are bounded ------------------------------------------------------------------------


async def test_a_balance_never_grows_beyond_a_bigint(admin: httpx.AsyncClient) -> None:
    """`ledger topup C 9000000000000` twice: the second is refused with a message, before any
    write; every read of the customer still works (it once became a REAL 1.8e19 on SQLite)."""
    await new_customer(admin, funds=None)
    first = await ok(await admin.post("/admin/customers/1/topup", json={"amount": BIGGEST}))
    assert first["balance"] == f"{BIGGEST}.00"
    second = await admin.post("/admin/customers/1/topup", json={"amount": BIGGEST})
    assert "above the most one customer may hold" in await refused(second, 400)
    more = await admin.post("/admin/customers/1/adjust", json={"amount": "0.000001"})
    assert "above the most" in await refused(more, 400)
    too_big = await admin.post("/admin/customers/1/topup", json={"amount": BIGGEST + ".000001"})
    assert too_big.status_code == 422 and "too large" in too_big.text

    assert await balance(admin) == Decimal(BIGGEST)
    assert [c["balance"] for c in await ok(await admin.get("/admin/customers"))] == [
        f"{BIGGEST}.00"
    ]
    assert len(await entries(admin)) == 1
    # Down is fine, and back up to the bound again.
    await ok(await admin.post("/admin/customers/1/adjust", json={"amount": "-1"}))
    await ok(await admin.post("/admin/customers/1/topup", json={"amount": "1"}))
    await clean(admin)


# --- hostile and mistaken inputs: 4xx with a message, nothing changed ---------------------------

SURROGATE = b'"\\udc80"'  # a lone surrogate, as JSON writes it


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("GET", "/admin/customers/¹", None, 404),
        ("GET", "/admin/customers/٥", None, 404),
        ("GET", "/admin/customers/99999999999999999999", None, 404),
        ("POST", "/admin/customers/99999999999999999999/topup", {"amount": "1"}, 404),
        ("GET", "/admin/customers/" + "x" * 201, None, 422),
        ("PATCH", "/admin/customers/1", {"markup_percent": "1e30"}, 422),
        ("PATCH", "/admin/customers/1", {"markup_percent": "10000.01"}, 422),
        ("PATCH", "/admin/customers/1", {"name": "x" * 201}, 422),
        ("PATCH", "/admin/customers/1", {"name": "a\nb"}, 422),
        ("POST", "/admin/customers", {"name": "new", "markup_percent": "1e30"}, 422),
        ("POST", "/admin/customers", {"name": "  "}, 422),
        ("PUT", "/admin/services/5/price", {"rate": "999999999999999"}, 422),
        ("PUT", "/admin/services/5/price", {"rate": "1000000.000001"}, 422),
        ("PUT", "/admin/services/5/price", {"rate": "0"}, 422),
        ("PUT", "/admin/services/5/price", {"markup_percent": "-99.01"}, 422),
        ("PUT", "/admin/services/5/price", {"markup_percent": "1e3"}, 422),
        ("PUT", "/admin/services/5/price", {"markup_percent": "²"}, 422),
        ("PATCH", "/admin/services/5", {"name": "x" * 201}, 422),
        ("POST", "/admin/orders/1/resolve", {"upstream_order_id": 99999999999999999999}, 422),
        ("GET", "/admin/report?since=9999-12-31", None, 422),
        ("GET", "/admin/report?until=9999-12-31", None, 422),
        ("GET", "/admin/report?since=0001-01-01", None, 422),
        ("GET", "/admin/orders?customer=99999999999999999999", None, 404),
        ("POST", "/admin/customers/1/topup", {"amount": "1", "ref": "has space"}, 422),
        ("POST", "/admin/customers/1/topup", {"amount": "1", "ref": "x" * 49}, 422),
        ("POST", "/admin/customers/1/topup", {"amount": "1", "memo": "x" * 2001}, 422),
        ("POST", "/admin/customers/1/topup", {"amount": "1", "memo": "nul \x00"}, 422),
    ],
)
async def test_hostile_inputs_are_refused_with_a_message(
    admin: httpx.AsyncClient, method: str, path: str, body: Any, status: int
) -> None:
    await ok(await admin.post("/admin/services/sync"))
    await new_customer(admin, funds="10")
    response = await admin.request(method, path, json=body)
    assert response.status_code == status, response.text
    assert response.json()["detail"]
    assert await balance(admin) == 10 and len(await entries(admin)) == 1
    assert (await ok(await admin.get("/admin/customers/1")))["markup_percent"] is None
    await clean(admin)


@pytest.mark.parametrize(
    ("path", "template"),
    [
        ("/admin/customers/1/topup", b'{"amount": "1", "memo": %s}'),
        ("/admin/customers/1/adjust", b'{"amount": "1", "memo": %s}'),
        ("/admin/customers/1/topup", b'{"amount": "1", "ref": %s}'),
        ("/admin/customers", b'{"name": %s}'),
    ],
)
async def test_a_lone_surrogate_is_refused(
    admin: httpx.AsyncClient, path: str, template: bytes
) -> None:
    """Once written, the memo broke every later read of the ledger (500s)."""
    await new_customer(admin, funds="10")
    body = template % SURROGATE
    headers = {"Content-Type": "application/json"}
    response = await admin.post(path, content=body, headers=headers)
    assert response.status_code in (404, 422), response.text
    patched = await admin.patch(
        "/admin/customers/1", content=b'{"name": %s}' % SURROGATE, headers=headers
    )
    assert patched.status_code == 422
    assert (
        len(await entries(admin)) == 1 and len(await ok(await admin.get("/admin/customers"))) == 1
    )
    assert (await ok(await admin.get("/admin/customers/1")))["name"] == "acme"
    await clean(admin)


# --- a top-up or an adjustment with a ref happens once ------------------------------------------


async def test_a_repeated_ref_credits_nothing(admin: httpx.AsyncClient) -> None:
    await new_customer(admin, funds=None)
    body = {"amount": "25", "ref": "stripe:pi_1", "memo": "card"}
    first = await ok(await admin.post("/admin/customers/1/topup", json=body))
    assert (first["balance"], first["duplicate"], first["ref"]) == ("25.00", False, "stripe:pi_1")
    again = await ok(await admin.post("/admin/customers/acme/topup", json=body))
    assert again == {**first, "duplicate": True}
    assert await balance(admin) == 25

    other_amount = await admin.post(
        "/admin/customers/1/topup", json={"amount": "26", "ref": "stripe:pi_1"}
    )
    assert "was used already" in await refused(other_amount, 400)
    await new_customer(admin, "other", funds=None)
    other_customer = await admin.post("/admin/customers/2/topup", json=body)
    assert "was used already" in await refused(other_customer, 400)

    # Adjustments have refs of their own; the same rule holds.
    fee = {"amount": "-1.5", "ref": "stripe:pi_1"}
    charged = await ok(await admin.post("/admin/customers/1/adjust", json=fee))
    assert (charged["balance"], charged["duplicate"]) == ("23.50", False)
    assert (await ok(await admin.post("/admin/customers/1/adjust", json=fee)))["duplicate"]
    assert await balance(admin) == Decimal("23.5") and await balance(admin, 2) == 0
    refs = sorted(e["ref"] for e in await entries(admin))
    assert refs == ["adjust:stripe:pi_1", "topup:stripe:pi_1"]
    await clean(admin)


async def test_the_same_ref_sent_at_once_credits_once(admin: httpx.AsyncClient) -> None:
    """A payment notification retried while the first is still being written."""
    await new_customer(admin, funds=None)
    body = {"amount": "10", "ref": "notify-77"}
    replies = await asyncio.gather(
        *(admin.post("/admin/customers/1/topup", json=body) for _ in range(8))
    )
    assert [r.status_code for r in replies] == [200] * 8
    assert sorted(r.json()["duplicate"] for r in replies) == [False] + [True] * 7
    assert await balance(admin) == 10 and len(await entries(admin)) == 1
    await clean(admin)


# --- a price rule says whom it reaches ----------------------------------------------------------


async def test_a_price_for_everyone_names_who_keeps_their_own(admin: httpx.AsyncClient) -> None:
    await ok(await admin.post("/admin/services/sync"))
    await ok(await admin.post("/admin/customers", json={"name": "plain"}), 201)
    await ok(await admin.post("/admin/customers", json={"name": "vip", "markup_percent": "5"}), 201)
    await ok(await admin.post("/admin/customers", json={"name": "deal"}), 201)
    own = {"rate": "9", "customer": "deal"}
    await ok(await admin.put("/admin/services/5/price", json=own))

    changed = await ok(await admin.put("/admin/services/5/price", json={"rate": "1.50"}))
    assert changed["applies_to"] == [{"id": 1, "name": "plain"}]
    assert changed["not_applied_to"] == [
        {"id": 2, "name": "vip", "reason": "their own markup of 5% comes first"},
        {"id": 3, "name": "deal", "reason": "their own price for this service comes first"},
    ]
    text = changed["changed"]
    assert text.startswith("fixed rate 1.50 for every customer without a price of their own")
    assert "not for 2 customers" in text and "'vip'" in text and "'deal'" in text


# --- resolutions are checked with the upstream, and can be corrected ----------------------------


@pytest.fixture
async def acme(admin: httpx.AsyncClient) -> dict[str, Any]:
    """Customer 1 with 100.00, and the simulator's catalog."""
    await ok(await admin.post("/admin/services/sync"))
    return await new_customer(admin, funds="100")


@pytest.fixture
def unknown_order(
    admin: httpx.AsyncClient,
    anon: httpx.AsyncClient,
    sim_client: httpx.AsyncClient,
    acme: dict[str, Any],
):  # type: ignore[no-untyped-def]
    """Places an order the upstream accepts without our hearing back: `unknown`, funds held.
    Returns (our order id, the upstream's id for it)."""

    async def make(marker: str) -> tuple[int, int]:
        await ok(await sim_client.post("/_sim/faults", json={"timeout_after_accept": 1.0}))
        order_id = await place(anon, acme["key"], f"sim:complete/{marker}")
        await ok(await sim_client.post("/_sim/faults", json={}))
        assert (await ok(await admin.get(f"/admin/orders/{order_id}")))["state"] == "unknown"
        return order_id, await sim_order_for(sim_client, f"sim:complete/{marker}")

    return make


async def test_a_typo_in_the_upstream_id_is_refused_unless_forced(
    admin: httpx.AsyncClient, sim_client: httpx.AsyncClient, unknown_order: Any
) -> None:
    lost, real = await unknown_order("typo")
    held = await balance(admin)
    typo = await admin.post(f"/admin/orders/{lost}/resolve", json={"upstream_order_id": 999999})
    message = await refused(typo, 400)
    assert "upstream order 999999 (no such order) does not match" in message
    assert "the upstream does not know it" in message and "force" in message
    assert (await ok(await admin.get(f"/admin/orders/{lost}")))["state"] == "unknown"
    assert await balance(admin) == held

    # The upstream down: it cannot confirm the id, so that is refused too (unless forced).
    await ok(await sim_client.post("/_sim/faults", json={"error5xx": 1.0}))
    down = await admin.post(f"/admin/orders/{lost}/resolve", json={"upstream_order_id": real})
    message = await refused(down, 400)
    assert f"upstream order {real} (no answer)" in message and "no usable answer" in message
    await ok(await sim_client.post("/_sim/faults", json={}))
    assert (await ok(await admin.get(f"/admin/orders/{lost}")))["state"] == "unknown"

    placed = await ok(
        await admin.post(f"/admin/orders/{lost}/resolve", json={"upstream_order_id": real})
    )
    check = placed["upstream_check"]
    assert (placed["state"], placed["upstream_order_id"]) == ("placed", real)
    assert check["found"] and check["mismatches"] == [] and not check["forced"]
    assert check["status"] and check["charge"] == check["expected_charge"] == placed["charge"]
    assert placed["correction"] is None
    await clean(admin)

    # Forced: accepted, and the reply says what was overridden.
    other, _ = await unknown_order("forced")
    forced = await ok(
        await admin.post(
            f"/admin/orders/{other}/resolve", json={"upstream_order_id": 888888, "force": True}
        )
    )
    assert forced["state"] == "placed" and forced["upstream_check"]["forced"]
    assert forced["upstream_check"]["found"] is False
    await clean(admin)


async def test_a_wrong_resolution_is_corrected_both_ways(
    admin: httpx.AsyncClient,
    anon: httpx.AsyncClient,
    db: Database,
    acme: dict[str, Any],
    unknown_order: Any,
) -> None:
    lost, real = await unknown_order("both-ways")
    charge = Decimal((await ok(await admin.get(f"/admin/orders/{lost}")))["charge"])
    before = await balance(admin)  # charged, held

    # Wrongly said "not placed": refunded in full.
    await ok(await admin.post(f"/admin/orders/{lost}/resolve", json={"not_placed": True}))
    assert await balance(admin) == before + charge
    # Without --correct, an earlier verdict stands.
    plain = await admin.post(f"/admin/orders/{lost}/resolve", json={"upstream_order_id": real})
    assert "say --correct" in await refused(plain, 400)

    # Corrected: placed after all, the customer pays again by an audited entry.
    body = {"upstream_order_id": real, "correct": True, "memo": "found it on the panel"}
    placed = await ok(await admin.post(f"/admin/orders/{lost}/resolve", json=body))
    assert (placed["state"], placed["upstream_order_id"]) == ("placed", real)
    assert placed["correction"] == f"correction:{lost}:1"
    assert placed["upstream_check"]["mismatches"] == []
    assert await balance(admin) == before
    entry = (await entries(admin))[0]
    assert (entry["ref"], entry["kind"], entry["order_id"]) == (
        placed["correction"],
        "adjustment",
        lost,
    )
    assert Decimal(entry["amount"]) == -charge and "found it on the panel" in entry["memo"]
    await clean(admin)

    # And back: it was not placed after all: refunded again, by a refund entry of its own.
    body = {"not_placed": True, "correct": True}
    rejected = await ok(await admin.post(f"/admin/orders/{lost}/resolve", json=body))
    assert rejected["state"] == "rejected" and rejected["correction"] == f"correction:{lost}:2"
    assert await balance(admin) == before + charge
    again = await admin.post(f"/admin/orders/{lost}/resolve", json=body)
    assert "not placed already" in await refused(again, 400)
    await clean(admin)
    assert await ledger.verify(db) == []
    # The customer's view of the order stays consistent: Canceled, nothing to pay.
    status = await panel(anon, acme["key"], "status", order=lost)
    assert status["status"] == "Canceled" and Decimal(status["charge"]) == 0


async def test_a_placed_order_moves_to_the_right_upstream_id(
    admin: httpx.AsyncClient, db: Database, unknown_order: Any
) -> None:
    """Resolved with a wrong (forced) upstream id; corrected to the right one, with a
    zero-amount audit entry; the status sync then follows the right one."""
    lost, real = await unknown_order("moved")
    wrong = {"upstream_order_id": 777777, "force": True}
    await ok(await admin.post(f"/admin/orders/{lost}/resolve", json=wrong))
    held = await balance(admin)

    same = {"upstream_order_id": 777777, "correct": True}
    assert "already" in await refused(
        await admin.post(f"/admin/orders/{lost}/resolve", json=same), 400
    )
    unchecked = {"upstream_order_id": 666666, "correct": True}
    assert "does not match" in await refused(
        await admin.post(f"/admin/orders/{lost}/resolve", json=unchecked), 400
    )
    right = {"upstream_order_id": real, "correct": True}
    moved = await ok(await admin.post(f"/admin/orders/{lost}/resolve", json=right))
    assert (moved["state"], moved["upstream_order_id"], moved["status"]) == (
        "placed",
        real,
        "Pending",
    )
    assert await balance(admin) == held
    [audit] = [e for e in await entries(admin) if e["ref"] == moved["correction"]]
    assert audit["amount"] == "0.00" and "777777" in audit["memo"] and str(real) in audit["memo"]
    await clean(admin)

    # The status sync now asks the upstream about the right order.
    await ok(await admin.post("/admin/sync"))
    async with db.read() as conn:
        refreshed = await conn.scalar(select(Order.refreshed_at).where(Order.id == lost))
    assert refreshed is not None
    assert (await ok(await admin.get(f"/admin/orders/{lost}")))["upstream_status"]
    await clean(admin)


def test_a_status_naming_another_link_or_service_is_a_mismatch() -> None:
    """Panels that tell an order's link and service in `status` are checked against them."""
    params = {"service": "5", "link": "https://ig.test/mine", "quantity": "1000"}
    same = parse_order_status(
        {"status": "Pending", "charge": "1.0200", "link": "https://ig.test/mine", "service": 5}
    )
    assert same is not None and _mismatches(params, 1_020_000, same) == []
    other = parse_order_status(
        {"status": "In progress", "charge": "3.00", "link": "https://ig.test/x", "service": "7"}
    )
    assert other is not None
    found = _mismatches(params, 1_020_000, other)
    assert len(found) == 3
    assert "link" in found[0] and "service is 7" in found[1] and "charged 3.00" in found[2]
    # After a cancel or a partial, the upstream's charge drops: not a mismatch.
    partial = parse_order_status({"status": "Partial", "charge": "0.10"})
    assert partial is not None and _mismatches(params, 1_020_000, partial) == []
