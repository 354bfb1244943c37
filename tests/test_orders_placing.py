"""Placing orders (issue 3): concurrency against one balance, Idempotency-Key, and `status`.

Proves: 100 simultaneous `add`s with funds for exactly 20 make exactly 20 orders (and 20 upstream
orders), 80 `Not enough funds on balance`, a balance of exactly 0; an Idempotency-Key (header or
parameter) makes a retried `add` return the first answer, charged once and sent upstream once,
also when the retries race; `status` (single and multi) answers our own ids and charges, never
the upstream's, and hides unknown, foreign and non-numeric ids behind `Incorrect order ID`.
Runs on SQLite and PostgreSQL.
"""

import asyncio
from typing import Any

import httpx
import pytest
from helpers import (
    Customer,
    add,
    api,
    assert_ledger_clean,
    balance_of,
    charge_text,
    entries_of,
    expected_charge,
    micros,
    new_customer,
    services_by_id,
    sim_calls,
    sim_orders,
    sim_orders_with_link,
)

from app import ledger
from app.catalog import sync_catalog
from app.db import Database
from app.main import Gateway
from app.orders.queries import count_by_state, get_order, list_orders
from app.settings import Settings

FOLLOWERS = 5  # a Default service of the simulator's catalog
STATUS_KEYS = {"order", "charge", "start_count", "status", "remains", "currency"}


@pytest.fixture
async def gw(gateway_app: Any) -> Gateway:
    gateway: Gateway = gateway_app.state.gateway
    assert (await sync_catalog(gateway.db, gateway.upstream)).ok
    return gateway


@pytest.fixture
async def followers(db: Database, gw: Gateway, client: httpx.AsyncClient) -> dict[str, Any]:
    """Service FOLLOWERS as a customer with the default test markup sees it."""
    probe = await new_customer(db, "probe")
    return (await services_by_id(client, probe.key))[FOLLOWERS]


def order_params(service: dict[str, Any], link: str, quantity: int | None = None) -> dict:
    return {
        "service": service["service"],
        "link": link,
        "quantity": quantity or int(service["min"]),
    }


# --- concurrency ----------------------------------------------------------------------------


async def test_100_simultaneous_adds_with_funds_for_exactly_20(
    db: Database,
    client: httpx.AsyncClient,
    sim_client: httpx.AsyncClient,
    followers: dict[str, Any],
) -> None:
    quantity = int(followers["min"])
    charge = expected_charge(followers, quantity)
    alice = await new_customer(db, "alice", funds=20 * charge)
    links = [f"https://example.com/race/{i}" for i in range(100)]

    replies = await asyncio.gather(
        *(add(client, alice.key, order_params(followers, link, quantity)) for link in links)
    )

    placed = {link: r["order"] for link, r in zip(links, replies, strict=True) if "order" in r}
    refused = [r for r in replies if "order" not in r]
    assert len(placed) == 20 and len(set(placed.values())) == 20
    assert all(
        r == {"status": "success", "order": placed[link]}
        for link, r in zip(links, replies, strict=True)
        if link in placed
    )
    assert refused == [{"error": "Not enough funds on balance"}] * 80

    assert await balance_of(db, alice) == 0
    assert micros((await api(client, alice.key, "balance"))["balance"]) == 0
    await assert_ledger_clean(db)
    entries = await entries_of(db, alice)
    assert sorted(e.kind for e in entries) == ["charge"] * 20 + ["topup"]
    assert all(e.amount == -charge for e in entries if e.kind == "charge")
    assert await count_by_state(db) == {"placed": 20}

    arrived = await sim_orders(sim_client)
    assert len(arrived) == 20 and await sim_calls(sim_client, "add") == 20
    assert {o["params"]["link"] for o in arrived} == set(placed)
    for link, order_id in placed.items():
        order = await get_order(db, order_id)
        assert order.upstream_order_id == sim_orders_with_link(arrived, link)[0]["id"]


# --- Idempotency-Key ----------------------------------------------------------------------


def keyed(how: str, key: str) -> tuple[dict[str, str], dict[str, str]]:
    """(extra parameters, headers) carrying an idempotency key the way `how` says."""
    return ({}, {"Idempotency-Key": key}) if how == "header" else ({"idempotency_key": key}, {})


@pytest.mark.parametrize("how", ["header", "parameter"])
async def test_same_key_same_params_is_one_order_charged_once(
    db: Database,
    client: httpx.AsyncClient,
    sim_client: httpx.AsyncClient,
    followers: dict[str, Any],
    how: str,
) -> None:
    funds = micros("100")
    alice = await new_customer(db, "alice", funds=funds)
    extra, headers = keyed(how, "retry-7f3a")
    params = order_params(followers, "https://example.com/idem") | extra

    first = await add(client, alice.key, params, headers=headers)
    again = [await add(client, alice.key, params, headers=headers) for _ in range(3)]
    assert first["status"] == "success" and again == [first] * 3

    charge = expected_charge(followers, params["quantity"])
    assert await balance_of(db, alice) == funds - charge
    [upstream] = await sim_orders(sim_client)
    assert await sim_calls(sim_client, "add") == 1
    assert "idempotency_key" not in upstream["params"]  # our parameter, not the upstream's
    assert [o.id for o in await list_orders(db)] == [first["order"]]

    # Without the key, the same parameters are a new order.
    plain = {k: v for k, v in params.items() if k != "idempotency_key"}
    other = await add(client, alice.key, plain)
    assert other["status"] == "success" and other["order"] != first["order"]
    assert await balance_of(db, alice) == funds - 2 * charge
    await assert_ledger_clean(db)


@pytest.mark.parametrize("how", ["header", "parameter"])
async def test_same_key_different_params_is_an_error_and_charges_nothing(
    db: Database,
    client: httpx.AsyncClient,
    sim_client: httpx.AsyncClient,
    followers: dict[str, Any],
    how: str,
) -> None:
    funds = micros("100")
    alice = await new_customer(db, "alice", funds=funds)
    extra, headers = keyed(how, "k-1")
    params = order_params(followers, "https://example.com/idem") | extra
    first = await add(client, alice.key, params, headers=headers)
    after_first = await balance_of(db, alice)
    assert after_first == funds - expected_charge(followers, params["quantity"])

    for changed in ({"quantity": params["quantity"] + 1}, {"link": "https://example.com/other"}):
        reply = await add(client, alice.key, params | changed, headers=headers)
        assert set(reply) == {"error"} and "Idempotency-Key" in reply["error"], reply
    assert await balance_of(db, alice) == after_first
    assert [o.id for o in await list_orders(db)] == [first["order"]]
    assert await sim_calls(sim_client, "add") == 1
    await assert_ledger_clean(db)


async def test_concurrent_requests_with_one_key_make_one_order(
    db: Database,
    client: httpx.AsyncClient,
    sim_client: httpx.AsyncClient,
    followers: dict[str, Any],
) -> None:
    funds = micros("100")
    alice = await new_customer(db, "alice", funds=funds)
    params = order_params(followers, "https://example.com/idem-race")
    replies = await asyncio.gather(
        *(add(client, alice.key, params, headers={"Idempotency-Key": "same"}) for _ in range(20))
    )
    first = replies[0]
    assert first["status"] == "success" and replies == [first] * 20
    assert await balance_of(db, alice) == funds - expected_charge(followers, params["quantity"])
    assert [o.id for o in await list_orders(db)] == [first["order"]]
    assert len(await sim_orders(sim_client)) == 1 and await sim_calls(sim_client, "add") == 1
    await assert_ledger_clean(db)


async def test_an_idempotency_key_belongs_to_one_customer(
    db: Database,
    client: httpx.AsyncClient,
    sim_client: httpx.AsyncClient,
    followers: dict[str, Any],
) -> None:
    funds = micros("50")
    alice = await new_customer(db, "alice", funds=funds)
    bob = await new_customer(db, "bob", funds=funds)
    params = order_params(followers, "https://example.com/shared-key")
    headers = {"Idempotency-Key": "order-1"}
    mine = await add(client, alice.key, params, headers=headers)
    theirs = await add(client, bob.key, params, headers=headers)
    assert mine["status"] == theirs["status"] == "success" and mine["order"] != theirs["order"]
    charge = expected_charge(followers, params["quantity"])
    assert await balance_of(db, alice) == await balance_of(db, bob) == funds - charge
    assert len(await sim_orders(sim_client)) == 2
    await assert_ledger_clean(db)


async def test_a_refused_order_replays_its_refusal_without_asking_again(
    db: Database,
    client: httpx.AsyncClient,
    sim_client: httpx.AsyncClient,
    followers: dict[str, Any],
) -> None:
    funds = micros("50")
    alice = await new_customer(db, "alice", funds=funds)
    params = order_params(followers, "https://example.com/sim:reject")
    headers = {"Idempotency-Key": "refused-once"}
    first = await add(client, alice.key, params, headers=headers)
    second = await add(client, alice.key, params, headers=headers)
    assert set(first) == {"error"} and second == first
    assert await sim_calls(sim_client, "add") == 1
    assert await balance_of(db, alice) == funds
    assert [o.state for o in await list_orders(db)] == ["rejected"]
    await assert_ledger_clean(db)


async def test_an_overlong_idempotency_key_is_refused(
    db: Database,
    client: httpx.AsyncClient,
    sim_client: httpx.AsyncClient,
    followers: dict[str, Any],
) -> None:
    funds = micros("50")
    alice = await new_customer(db, "alice", funds=funds)
    params = order_params(followers, "https://example.com/long-key")
    reply = await add(client, alice.key, params, headers={"Idempotency-Key": "k" * 129})
    assert set(reply) == {"error"} and "Idempotency-Key" in reply["error"]
    assert await balance_of(db, alice) == funds
    assert await list_orders(db) == [] and await sim_calls(sim_client, "add") == 0


# --- status ---------------------------------------------------------------------------------


async def place(
    client: httpx.AsyncClient, customer: Customer, service: dict[str, Any], n: int, tag: str
) -> dict[int, int]:
    """n orders of increasing quantity; {our order id: quantity}."""
    placed = {}
    for i in range(n):
        quantity = int(service["min"]) + 13 * i
        link = f"https://example.com/{tag}/{i}"
        reply = await add(client, customer.key, order_params(service, link, quantity))
        assert reply["status"] == "success", reply
        placed[reply["order"]] = quantity
    return placed


async def test_status_answers_our_ids_and_our_charges(
    db: Database,
    client: httpx.AsyncClient,
    sim_client: httpx.AsyncClient,
    followers: dict[str, Any],
    settings: Settings,
) -> None:
    alice = await new_customer(db, "alice", funds=micros("100"))
    placed = await place(client, alice, followers, 3, "mine")
    upstream = {o["params"]["link"]: o for o in await sim_orders(sim_client)}
    for order_id, quantity in placed.items():
        status = await api(client, alice.key, "status", order=order_id)
        assert set(status) == STATUS_KEYS
        charge = charge_text(expected_charge(followers, quantity))
        assert status["order"] == str(order_id) and status["charge"] == charge
        assert status["status"] == "Pending" and status["currency"] == settings.currency
        assert status["start_count"].isdigit() and status["remains"].isdigit()
        theirs = upstream[(await get_order(db, order_id)).params["link"]]
        assert theirs["id"] != order_id and theirs["charge"] != charge  # never the upstream's

    many = await api(client, alice.key, "status", orders=",".join(map(str, placed)))
    assert many == {str(i): await api(client, alice.key, "status", order=i) for i in placed}
    await assert_ledger_clean(db)


@pytest.mark.parametrize("dialect", ["standard", "smartpanel"])
async def test_unknown_foreign_and_non_numeric_ids_are_incorrect(
    db: Database,
    client: httpx.AsyncClient,
    followers: dict[str, Any],
    dialect: str,
) -> None:
    alice = await new_customer(db, "alice", funds=micros("100"), dialect=dialect)
    bob = await new_customer(db, "bob", funds=micros("100"))
    [mine] = await place(client, alice, followers, 1, "mine")
    [foreign] = await place(client, bob, followers, 1, "bob")
    bad = [str(foreign), str(foreign + 1000), "abc", "-1", "1.0", "99999999999999999999"]

    for raw in bad:
        assert await api(client, alice.key, "status", order=raw) == {"error": "Incorrect order ID"}
    many = await api(client, alice.key, "status", orders=",".join([str(mine), *bad]))
    assert list(many) == [str(mine), *bad]  # keyed by the id as sent, in order
    assert many[str(mine)] == await api(client, alice.key, "status", order=mine)
    item_error = (
        "Incorrect order ID" if dialect == "smartpanel" else {"error": "Incorrect order ID"}
    )
    assert all(many[raw] == item_error for raw in bad)
    # Bob still sees his own order.
    assert (await api(client, bob.key, "status", order=foreign))["order"] == str(foreign)


async def test_multi_status_takes_at_most_100_ids(
    db: Database,
    client: httpx.AsyncClient,
    followers: dict[str, Any],
) -> None:
    alice = await new_customer(db, "alice", funds=micros("100"))
    placed = list(await place(client, alice, followers, 2, "cap"))
    hundred = [*map(str, placed), *(str(10_000 + i) for i in range(98))]
    many = await api(client, alice.key, "status", orders=",".join(hundred))
    assert list(many) == hundred
    assert [many[str(i)]["order"] for i in placed] == [str(i) for i in placed]
    assert all(many[raw] == {"error": "Incorrect order ID"} for raw in hundred[2:])

    too_many = await api(client, alice.key, "status", orders=",".join([*hundred, "20000"]))
    assert set(too_many) == {"error"} and "100" in too_many["error"]


async def test_a_key_refused_for_funds_works_after_a_top_up(
    db: Database,
    client: httpx.AsyncClient,
    sim_client: httpx.AsyncClient,
    followers: dict[str, Any],
) -> None:
    """`Not enough funds` made no order, so the key is still free for the retry."""
    params = order_params(followers, "https://example.com/topup-then-retry")
    charge = expected_charge(followers, params["quantity"])
    alice = await new_customer(db, "alice", funds=charge - 1)
    headers = {"Idempotency-Key": "after-topup"}
    assert await add(client, alice.key, params, headers=headers) == {
        "error": "Not enough funds on balance"
    }
    assert await list_orders(db) == [] and await sim_calls(sim_client, "add") == 0

    await ledger.topup(db, alice.id, 1)
    first = await add(client, alice.key, params, headers=headers)
    assert first["status"] == "success"
    assert await add(client, alice.key, params, headers=headers) == first
    assert await balance_of(db, alice) == 0
    assert await sim_calls(sim_client, "add") == 1
    await assert_ledger_clean(db)
