"""Upstream faults during `add`, and the operator's resolution of `unknown` orders (issue 3).

Proves, for each fault the simulator can inject: the customer's reply, the order's state and
the ledger. Ambiguous outcomes (5xx, HTML page, garbage, dropped connection, accepted-then-
silent) answer our order id, keep the funds held, show `Pending`, list the order as `unknown`
and never retry `add` upstream. Definite refusals (an error reply, an unreachable upstream, the
upstream's own "not enough funds") refund in full and never show the customer the upstream's
words about our balance. An operator resolves `unknown` orders exactly once. The ledger
invariants hold after every scenario. Runs on SQLite and PostgreSQL.
"""

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from conftest import gateway_settings
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
    set_faults,
    set_sim_balance,
    sim_calls,
    sim_orders,
    sim_orders_with_link,
)
from sqlalchemy import text

from app.catalog import sync_catalog
from app.db import Database
from app.errors import OperatorError
from app.main import Gateway, create_app
from app.orders.queries import get_order, list_orders, resolve
from app.settings import Settings
from app.upstream import UpstreamClient

FOLLOWERS = 5  # a Default service of the simulator's catalog
FUNDS = micros("50")
# What reaches the simulator's order book under each ambiguous fault (DESIGN.md, "The
# simulator"): a dropped connection and "accept, then time out" come after the order was made.
AMBIGUOUS = {
    "error5xx": 0,
    "html": 0,
    "garbage": 0,
    "drop": 1,
    "timeout_after_accept": 1,
    "sim:timeout": 1,  # the link marker: accepted, the reply never comes
}


@pytest.fixture
def settings(database_url: str) -> Settings:
    """Short upstream timeouts: the silent faults become `unknown` within a second."""
    return gateway_settings(
        database_url, upstream_timeout_seconds=0.5, upstream_connect_timeout_seconds=0.25
    )


@pytest.fixture
async def gw(gateway_app: Any) -> Gateway:
    gateway: Gateway = gateway_app.state.gateway
    assert (await sync_catalog(gateway.db, gateway.upstream)).ok
    return gateway


@pytest.fixture
async def alice(db: Database, gw: Gateway) -> Customer:
    return await new_customer(db, "alice", funds=FUNDS)


@pytest.fixture
async def followers(client: httpx.AsyncClient, alice: Customer) -> dict[str, Any]:
    return (await services_by_id(client, alice.key))[FOLLOWERS]


def order_params(service: dict[str, Any], link: str) -> dict[str, Any]:
    return {"service": service["service"], "link": link, "quantity": int(service["min"])}


async def fault_on(sim: httpx.AsyncClient, kind: str, link: str) -> str:
    """Turn fault `kind` on for every upstream call; returns the link to order (a marker
    kind rides on the link instead)."""
    if kind.startswith("sim:"):
        return f"{link}/{kind}"
    await set_faults(sim, {kind: 1.0})
    return link


async def make_unknown(
    client: httpx.AsyncClient,
    sim: httpx.AsyncClient,
    customer: Customer,
    service: dict,
    kind: str,
    link: str,
) -> int:
    link = await fault_on(sim, kind, link)
    reply = await add(client, customer.key, order_params(service, link))
    await set_faults(sim, {})
    assert set(reply) == {"status", "order"}, reply
    return reply["order"]


# --- ambiguous: funds held, Pending, operator ------------------------------------------------


@pytest.mark.parametrize("kind", list(AMBIGUOUS))
async def test_ambiguous_outcome_holds_the_funds_and_answers_pending(
    db: Database,
    client: httpx.AsyncClient,
    sim_client: httpx.AsyncClient,
    alice: Customer,
    followers: dict[str, Any],
    kind: str,
) -> None:
    link = await fault_on(sim_client, kind, "https://example.com/ambiguous")
    params = order_params(followers, link)
    charge = expected_charge(followers, params["quantity"])

    reply = await add(client, alice.key, params)

    assert set(reply) == {"status", "order"} and reply["status"] == "success", reply
    order_id = reply["order"]
    order = await get_order(db, order_id)
    assert (order.state, order.upstream_order_id, order.charge) == ("unknown", None, charge)
    assert await balance_of(db, alice) == FUNDS - charge  # held, not refunded
    assert [e.kind for e in await entries_of(db, alice)] == ["charge", "topup"]
    status = await api(client, alice.key, "status", order=order_id)
    assert (status["order"], status["status"], status["charge"]) == (
        str(order_id),
        "Pending",
        charge_text(charge),
    )
    assert [o.id for o in await list_orders(db, state="unknown")] == [order_id]

    assert await sim_calls(sim_client, "add") == 1  # never retried
    assert len(sim_orders_with_link(await sim_orders(sim_client), link)) == AMBIGUOUS[kind]
    assert len(await sim_orders(sim_client)) == AMBIGUOUS[kind]
    await assert_ledger_clean(db)


async def test_a_customer_hanging_up_does_not_strand_the_order_in_sending(
    db: Database,
    client: httpx.AsyncClient,
    sim_client: httpx.AsyncClient,
    alice: Customer,
    followers: dict[str, Any],
    settings: Settings,
) -> None:
    """The client gives up while the upstream call is in flight: the order still gets its
    outcome (`unknown` here: accepted upstream, no reply), nothing stays `sending`."""
    link = await fault_on(sim_client, "timeout_after_accept", "https://example.com/hangup")
    request = asyncio.create_task(add(client, alice.key, order_params(followers, link)))
    for _ in range(200):
        if len(await sim_orders(sim_client)) == 1:
            break
        await asyncio.sleep(0.01)
    assert [o.state for o in await list_orders(db)] == ["sending"]
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request

    deadline = settings.upstream_timeout_seconds + 2 * settings.upstream_connect_timeout_seconds
    for _ in range(int(deadline / 0.05) + 40):
        states = [o.state for o in await list_orders(db)]
        if states != ["sending"]:
            break
        await asyncio.sleep(0.05)
    assert states == ["unknown"]
    charge = expected_charge(followers, int(followers["min"]))
    assert await balance_of(db, alice) == FUNDS - charge
    assert await sim_calls(sim_client, "add") == 1
    await assert_ledger_clean(db)


# --- refused: refunded in full ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ["reject", "sim:reject"])
async def test_refusal_refunds_in_full_and_the_order_is_invisible(
    db: Database,
    client: httpx.AsyncClient,
    sim_client: httpx.AsyncClient,
    alice: Customer,
    followers: dict[str, Any],
    kind: str,
) -> None:
    link = await fault_on(sim_client, kind, "https://example.com/refused")
    reply = await add(client, alice.key, order_params(followers, link))

    # The simulator refuses as SmartPanel does ("Service ID does not exists"): the customer
    # gets CONTRACT.md's string for it, never the upstream's own words.
    assert reply == {"error": "Incorrect service ID"}
    [order] = await list_orders(db)
    assert order.state == "rejected" and order.refunded == order.charge > 0
    assert await balance_of(db, alice) == FUNDS
    entries = {e.kind: e.amount for e in await entries_of(db, alice)}
    assert entries == {"topup": FUNDS, "charge": -order.charge, "refund": order.charge}
    assert await api(client, alice.key, "status", order=order.id) == {"error": "Incorrect order ID"}
    assert await api(client, alice.key, "status", orders=str(order.id)) == {
        str(order.id): {"error": "Incorrect order ID"}
    }
    assert await sim_calls(sim_client, "add") == 1 and await sim_orders(sim_client) == []
    await assert_ledger_clean(db)


async def test_what_the_upstream_refuses_after_we_accepted_is_refunded(
    db: Database,
    client: httpx.AsyncClient,
    sim_client: httpx.AsyncClient,
    alice: Customer,
    followers: dict[str, Any],
) -> None:
    """SmartPanel takes only some drip-feed intervals (and answers that refusal in its other
    error shape, {"status": "error", "message": …}): refused upstream, refunded here."""
    assert followers["dripfeed"]
    params = order_params(followers, "https://example.com/odd-interval")
    reply = await add(client, alice.key, params | {"runs": 2, "interval": 7})
    assert set(reply) == {"error"} and "interval" in reply["error"].lower(), reply
    [order] = await list_orders(db)
    assert order.state == "rejected" and order.refunded == order.charge
    assert await balance_of(db, alice) == FUNDS
    assert await sim_calls(sim_client, "add") == 1 and await sim_orders(sim_client) == []
    await assert_ledger_clean(db)


async def test_upstream_out_of_funds_is_not_the_customers_problem(
    db: Database,
    client: httpx.AsyncClient,
    sim_client: httpx.AsyncClient,
    alice: Customer,
    followers: dict[str, Any],
) -> None:
    await set_sim_balance(sim_client, "0")
    reply = await add(client, alice.key, order_params(followers, "https://example.com/broke"))

    assert set(reply) == {"error"}
    assert reply["error"] != "Not enough funds on balance"  # the reseller's, not theirs
    assert "temporarily unavailable" in reply["error"].lower()
    [order] = await list_orders(db)
    assert order.state == "rejected"
    assert await balance_of(db, alice) == FUNDS
    assert micros((await api(client, alice.key, "balance"))["balance"]) == FUNDS
    assert await sim_calls(sim_client, "add") == 1 and await sim_orders(sim_client) == []
    await assert_ledger_clean(db)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("transport", ["default", "httpx"])
async def test_unreachable_upstream_refunds_and_says_try_later(
    db: Database,
    database_url: str,
    upstream: UpstreamClient,
    transport: str,
) -> None:
    """A real socket to a closed port: the request never left, so it is safe to refund."""
    assert (await sync_catalog(db, upstream)).ok  # the catalog from when it was reachable
    settings = gateway_settings(
        database_url, upstream_url=f"http://127.0.0.1:{closed_port()}/api/v1"
    )
    real = None if transport == "default" else httpx.AsyncHTTPTransport()
    app = create_app(settings, upstream_transport=real, background=False)
    alice = await new_customer(db, "alice", funds=FUNDS)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client,
    ):
        followers = (await services_by_id(client, alice.key))[FOLLOWERS]
        reply = await add(client, alice.key, order_params(followers, "https://example.com/x"))
        assert set(reply) == {"error"} and "temporarily unavailable" in reply["error"].lower()
        [order] = await list_orders(db)
        assert order.state == "rejected"
        assert await balance_of(db, alice) == FUNDS
        assert await api(client, alice.key, "status", order=order.id) == {
            "error": "Incorrect order ID"
        }
    await assert_ledger_clean(db)


# --- the operator resolves unknown orders ---------------------------------------------------


async def test_resolve_as_placed_with_the_upstream_order(
    db: Database,
    client: httpx.AsyncClient,
    sim_client: httpx.AsyncClient,
    alice: Customer,
    followers: dict[str, Any],
) -> None:
    order_id = await make_unknown(
        client, sim_client, alice, followers, "timeout_after_accept", "https://example.com/r1"
    )
    held = await balance_of(db, alice)
    [upstream] = await sim_orders(sim_client)  # the operator finds it on the upstream panel

    resolved = await resolve(db, order_id, upstream_order_id=upstream["id"])
    assert (resolved.state, resolved.upstream_order_id) == ("placed", upstream["id"])
    assert await balance_of(db, alice) == held  # stays charged: it was placed
    status = await api(client, alice.key, "status", order=order_id)
    assert status["order"] == str(order_id) and status["status"] == "Pending"

    for again in ({"upstream_order_id": upstream["id"]}, {"not_placed": True}):
        with pytest.raises(OperatorError):
            await resolve(db, order_id, **again)
    assert (await get_order(db, order_id)).state == "placed"
    assert await balance_of(db, alice) == held
    await assert_ledger_clean(db)


async def test_resolve_as_not_placed_refunds_exactly_once(
    db: Database,
    client: httpx.AsyncClient,
    sim_client: httpx.AsyncClient,
    alice: Customer,
    followers: dict[str, Any],
) -> None:
    order_id = await make_unknown(
        client, sim_client, alice, followers, "error5xx", "https://example.com/r2"
    )
    charge = (await get_order(db, order_id)).charge
    assert await balance_of(db, alice) == FUNDS - charge

    resolved = await resolve(db, order_id, not_placed=True)
    assert resolved.state == "rejected" and resolved.refunded == charge
    assert await balance_of(db, alice) == FUNDS
    for again in ({"not_placed": True}, {"upstream_order_id": 123456}):
        with pytest.raises(OperatorError):
            await resolve(db, order_id, **again)
    assert await balance_of(db, alice) == FUNDS
    refunds = [e for e in await entries_of(db, alice) if e.kind == "refund"]
    assert [(e.order_id, e.amount) for e in refunds] == [(order_id, charge)]
    await assert_ledger_clean(db)


async def test_resolve_needs_exactly_one_verdict_and_an_unknown_order(
    db: Database,
    client: httpx.AsyncClient,
    sim_client: httpx.AsyncClient,
    alice: Customer,
    followers: dict[str, Any],
) -> None:
    unknown = await make_unknown(
        client, sim_client, alice, followers, "html", "https://example.com/r3"
    )
    placed = await add(client, alice.key, order_params(followers, "https://example.com/ok"))
    held = await balance_of(db, alice)
    for verdict in ({}, {"upstream_order_id": 1, "not_placed": True}):
        with pytest.raises(OperatorError):
            await resolve(db, unknown, **verdict)
    for verdict in ({"not_placed": True}, {"upstream_order_id": 1}):
        with pytest.raises(OperatorError):  # only unknown orders resolve
            await resolve(db, placed["order"], **verdict)
    with pytest.raises(OperatorError):
        await resolve(db, 999_999, not_placed=True)
    assert (await get_order(db, unknown)).state == "unknown"
    assert await balance_of(db, alice) == held
    await assert_ledger_clean(db)


async def test_an_upstream_order_attached_to_another_order_is_refused(
    db: Database,
    client: httpx.AsyncClient,
    sim_client: httpx.AsyncClient,
    alice: Customer,
    followers: dict[str, Any],
) -> None:
    placed = await add(client, alice.key, order_params(followers, "https://example.com/first"))
    taken = (await get_order(db, placed["order"])).upstream_order_id
    assert taken is not None
    unknown = await make_unknown(
        client, sim_client, alice, followers, "garbage", "https://example.com/second"
    )
    held = await balance_of(db, alice)
    with pytest.raises(OperatorError):
        await resolve(db, unknown, upstream_order_id=taken)
    assert (await get_order(db, unknown)).state == "unknown"
    assert await balance_of(db, alice) == held

    # Two unknown orders cannot both claim the same (free) upstream order either.
    other = await make_unknown(
        client, sim_client, alice, followers, "drop", "https://example.com/third"
    )
    [dropped] = sim_orders_with_link(await sim_orders(sim_client), "https://example.com/third")
    await resolve(db, other, upstream_order_id=dropped["id"])
    with pytest.raises(OperatorError):
        await resolve(db, unknown, upstream_order_id=dropped["id"])
    await assert_ledger_clean(db)


async def waiting_on_locks(db: Database) -> int:
    async with db.read() as probe:
        return await probe.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND datname = current_database()"
            )
        )


async def race(
    db: Database, order_id: int, verdicts: list[Callable[[], Awaitable[Any]]]
) -> list[Any]:
    """Operators resolve one order at the same moment: each reads it `unknown` before any can
    write (the test holds the order's row, or on SQLite the write lock, until all of them
    wait), then they go, in the order given (PostgreSQL queues row locks first come, first
    served)."""
    tasks = []
    async with db.write() as conn:
        if not db.is_sqlite:
            await conn.execute(
                text("SELECT id FROM orders WHERE id = :id FOR UPDATE"), {"id": order_id}
            )
        for verdict in verdicts:
            tasks.append(asyncio.create_task(verdict()))
            if db.is_sqlite:
                await asyncio.sleep(0.1)
                continue
            for _ in range(500):
                if await waiting_on_locks(db) == len(tasks):
                    break
                await asyncio.sleep(0.01)
            else:
                raise AssertionError("the operators never got to wait on the order")
    return await asyncio.gather(*tasks, return_exceptions=True)


def not_placed(db: Database, order_id: int) -> Callable[[], Awaitable[Any]]:
    return lambda: resolve(db, order_id, not_placed=True)


async def test_operators_resolving_at_once_refund_once(
    db: Database,
    client: httpx.AsyncClient,
    sim_client: httpx.AsyncClient,
    alice: Customer,
    followers: dict[str, Any],
) -> None:
    order_id = await make_unknown(
        client, sim_client, alice, followers, "error5xx", "https://example.com/race"
    )
    results = await race(db, order_id, [not_placed(db, order_id)] * 3)
    done = [r for r in results if not isinstance(r, BaseException)]
    assert len(done) == 1 and done[0].state == "rejected", results
    assert await balance_of(db, alice) == FUNDS
    assert [e.kind for e in await entries_of(db, alice)].count("refund") == 1
    await assert_ledger_clean(db)


async def test_contradicting_verdicts_at_once_one_wins_and_the_books_agree(
    db: Database,
    client: httpx.AsyncClient,
    sim_client: httpx.AsyncClient,
    alice: Customer,
    followers: dict[str, Any],
) -> None:
    order_id = await make_unknown(
        client, sim_client, alice, followers, "timeout_after_accept", "https://example.com/both"
    )
    held = await balance_of(db, alice)
    [upstream] = await sim_orders(sim_client)

    def placed() -> Awaitable[Any]:
        return resolve(db, order_id, upstream_order_id=upstream["id"])

    results = await race(db, order_id, [placed, not_placed(db, order_id)])
    assert len([r for r in results if not isinstance(r, BaseException)]) == 1, results
    order = await get_order(db, order_id)
    if order.state == "placed":
        assert (order.refunded, await balance_of(db, alice)) == (0, held)
    else:
        assert (order.state, order.upstream_order_id, order.refunded) == (
            "rejected",
            None,
            order.charge,
        )
        assert await balance_of(db, alice) == FUNDS
    await assert_ledger_clean(db)


async def test_the_operator_who_lost_the_race_gets_a_readable_refusal(
    db: Database,
    client: httpx.AsyncClient,
    sim_client: httpx.AsyncClient,
    alice: Customer,
    followers: dict[str, Any],
) -> None:
    order_id = await make_unknown(
        client, sim_client, alice, followers, "error5xx", "https://example.com/race2"
    )
    results = await race(db, order_id, [not_placed(db, order_id)] * 2)
    failed = [r for r in results if isinstance(r, BaseException)]
    assert len(failed) == 1 and isinstance(failed[0], OperatorError), results


async def test_an_order_resolved_as_not_placed_reads_canceled(
    db: Database,
    client: httpx.AsyncClient,
    sim_client: httpx.AsyncClient,
    alice: Customer,
    followers: dict[str, Any],
) -> None:
    order_id = await make_unknown(
        client, sim_client, alice, followers, "error5xx", "https://example.com/told"
    )
    assert (await api(client, alice.key, "status", order=order_id))["status"] == "Pending"
    await resolve(db, order_id, not_placed=True)
    status = await api(client, alice.key, "status", order=order_id)
    assert (status.get("order"), status.get("status"), status.get("charge")) == (
        str(order_id),
        "Canceled",
        charge_text(0),
    )
