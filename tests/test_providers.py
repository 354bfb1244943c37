"""Several providers (issue 13): two in-process simulators behind one gateway.

Provider `default` is simulator A (SmartPanel, SMMGW_UPSTREAM_URL); provider `b` is simulator B
(standard dialect), added as an operator adds one, with its key stored encrypted. Their
catalogs overlap (the same ids) at different prices; B's services 9 and 14 are mapped as
alternatives of local services 9 and 14, after A's. Everything is asked of the simulators
themselves (/_sim/stats, /_sim/orders) and of the gateway's contract; both databases.
"""

import asyncio
import contextlib
import json
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import pytest
from conftest import SIM_KEY, FakeClock, gateway_settings
from fastapi import FastAPI
from helpers import (
    Customer,
    add,
    api,
    assert_ledger_clean,
    balance_of,
    entries_of,
    expected_charge,
    new_customer,
    services_by_id,
    set_faults,
    set_sim_balance,
    sim_calls,
    sim_orders,
)
from sqlalchemy import text

from app import catalog, ledger, providers
from app.admin import ops
from app.admin.schemas import ResolveIn
from app.catalog import OTHER_PROVIDERS_FIRST_ID
from app.contract import TEMPORARILY_UNAVAILABLE
from app.db import Database
from app.errors import OperatorError
from app.main import Gateway, create_app, sending_grace_seconds
from app.models import utcnow
from app.money import charge_for, parse_micros
from app.orders.queries import get_order
from app.simulator import SimConfig, create_simulator_app
from app.sync import sync_forever, sync_pass

KEY_B = "sim-b-key-0123456789"
SECRET = "a-test-secret-of-at-least-32-characters!"
A_HOST, B_HOST = "upstream.test", "b.test"
SHARED = (9, 14)
B_RATES = {9: "0.0400", 14: "0.9000"}  # 9: cheaper at B; 14: far dearer than we sell it
DEFAULT, B = 1, 2


class HostRouter(httpx.AsyncBaseTransport):
    """The gateway's upstream transport: each provider's host to its own in-process
    simulator; a host in `down` refuses the connection (the request never leaves)."""

    def __init__(self, apps: dict[str, FastAPI]) -> None:
        self.transports = {host: httpx.ASGITransport(app=app) for host, app in apps.items()}
        self.down: set[str] = set()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.host in self.down:
            raise httpx.ConnectError("connection refused", request=request)
        return await self.transports[request.url.host].handle_async_request(request)

    async def aclose(self) -> None:  # shared by every provider's client: closed by no one
        pass


@dataclass
class Two:
    gw: Gateway
    client: httpx.AsyncClient
    sim_a: httpx.AsyncClient
    sim_b: httpx.AsyncClient
    router: HostRouter
    clock: FakeClock


@pytest.fixture
async def two(db: Database, database_url: str, clock: FakeClock) -> AsyncIterator[Two]:
    sim_a = create_simulator_app(SimConfig(key=SIM_KEY, tick_seconds=1.0, seed=1), clock=clock)
    sim_b = create_simulator_app(
        SimConfig(key=KEY_B, dialect="standard", tick_seconds=1.0, seed=2), clock=clock
    )
    router = HostRouter({A_HOST: sim_a, B_HOST: sim_b})
    settings = gateway_settings(database_url, secret_key=SECRET)
    app = create_app(settings, upstream_transport=router, background=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gateway.test"
        ) as client,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=sim_a), base_url=f"http://{A_HOST}"
        ) as a,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=sim_b), base_url=f"http://{B_HOST}"
        ) as b,
    ):
        gw = app.state.gateway
        added = await providers.add_provider(
            db, settings, name="b", url=f"http://{B_HOST}/api/v2", key=KEY_B, family="standard"
        )
        assert added.id == B
        edited = await b.post(
            "/_sim/catalog", json={str(s): {"rate": r} for s, r in B_RATES.items()}
        )
        assert edited.status_code == 200, edited.text
        synced = await ops.sync_catalog(gw.db, gw.providers)
        assert synced.ok, synced
        for service in SHARED:
            await catalog.map_offer(db, service, B, service)
        yield Two(gw, client, a, b, router, clock)


async def _customer(db: Database, name: str = "c") -> Customer:
    return await new_customer(db, name, funds=parse_micros("100"))


async def _order(
    two: Two,
    customer: Customer,
    service: int = 9,
    headers: dict[str, str] | None = None,
    **params: Any,
) -> Any:
    values: dict[str, Any] = {"service": service, "link": "https://x.test/p/sim:complete"}
    values["quantity"] = 1000
    values.update(params)
    return await add(two.client, customer.key, values, headers=headers)


def _cost(rate: str, units: int) -> int:
    return charge_for(parse_micros(rate), units)


async def _one_charge(db: Database, customer: Customer, order_id: int) -> list[int]:
    return [e.amount for e in await entries_of(db, customer) if e.order_id == order_id]


# --- the catalog across providers ---------------------------------------------------------------


async def test_the_catalog_shows_one_service_per_id_priced_from_the_preferred_offer(
    two: Two, db: Database
) -> None:
    customer = await _customer(db)
    listing = await services_by_id(two.client, customer.key)
    # Local 9 is still A's service 9 (A's price, A's name); B's own copies of the shared
    # services were mapped away, its others got local ids of their own, far above A's, and
    # wait hidden until the operator sells one.
    assert parse_micros(listing[9]["rate"]) == (await _priced(db, 9, customer)).rate
    assert (await _priced(db, 9, customer)).cost == parse_micros("0.0450")
    assert all(sid < OTHER_PROVIDERS_FIRST_ID for sid in listing)
    b_only = [
        v
        for v in await catalog.list_services(db, 0)
        if v.id >= OTHER_PROVIDERS_FIRST_ID and v.upstream_listed
    ]
    b_catalog = (await two.sim_b.get("/_sim/catalog")).json()
    assert len(b_only) == sum(s["listed"] for s in b_catalog.values()) - len(SHARED)
    assert all(v.hidden for v in b_only)
    await catalog.set_hidden(db, b_only[0].id, False)
    assert b_only[0].id in await services_by_id(two.client, customer.key)
    offers = await catalog.list_offers(db, 9)
    assert [(o.provider, o.provider_service_id, o.rate) for o in offers] == [
        ("default", 9, parse_micros("0.0450")),
        ("b", 9, parse_micros(B_RATES[9])),
    ]


async def _priced(db: Database, service: int, customer: Customer):  # type: ignore[no-untyped-def]
    found = await catalog.priced_service(db, service, customer.id, 1234, 0)
    assert found is not None
    return found


# --- routing an add -----------------------------------------------------------------------------


async def test_an_order_goes_to_the_preferred_provider(two: Two, db: Database) -> None:
    customer = await _customer(db)
    reply = await _order(two, customer)
    order = await get_order(db, reply["order"])
    assert (order.state, order.provider_id) == ("placed", DEFAULT)
    assert await sim_calls(two.sim_a) == 1 and await sim_calls(two.sim_b) == 0
    assert order.params["service"] == "9"
    await assert_ledger_clean(db)


async def test_out_of_funds_then_the_next_provider_takes_it_in_the_same_request(
    two: Two, db: Database
) -> None:
    customer = await _customer(db)
    listing = await services_by_id(two.client, customer.key)
    await set_sim_balance(two.sim_a, "0")
    before = await balance_of(db, customer)
    reply = await _order(two, customer)
    order = await get_order(db, reply["order"])
    assert (order.state, order.provider_id) == ("placed", B)
    at_b = await sim_orders(two.sim_b)
    assert [o["id"] for o in at_b] == [order.upstream_order_id]
    assert at_b[0]["params"]["service"] == "9"
    assert await sim_orders(two.sim_a) == []  # it refused: nothing there
    charge = expected_charge(listing[9], 1000)
    assert await _one_charge(db, customer, order.id) == [-charge]  # charged once, same price
    assert await balance_of(db, customer) == before - charge
    async with db.read() as conn:
        cost = await conn.scalar(text(f"SELECT cost FROM orders WHERE id = {order.id}"))
    assert cost == _cost(B_RATES[9], 1000)  # what it costs at the provider that took it
    # A is known to be out of funds now: the next order goes to B first, A is not asked.
    calls_a = await sim_calls(two.sim_a)
    second = await get_order(db, (await _order(two, customer))["order"])
    assert second.provider_id == B
    assert await sim_calls(two.sim_a) == calls_a
    await assert_ledger_clean(db)


async def test_a_provider_down_then_the_next_takes_it(two: Two, db: Database) -> None:
    customer = await _customer(db)
    two.router.down.add(A_HOST)
    reply = await _order(two, customer)
    order = await get_order(db, reply["order"])
    assert (order.state, order.provider_id) == ("placed", B)
    assert len(await _one_charge(db, customer, order.id)) == 1
    await assert_ledger_clean(db)


async def test_every_provider_refusing_refunds_the_one_charge(two: Two, db: Database) -> None:
    customer = await _customer(db)
    before = await balance_of(db, customer)
    two.router.down.add(A_HOST)
    await set_sim_balance(two.sim_b, "0")
    reply = await _order(two, customer)
    assert reply == {"error": TEMPORARILY_UNAVAILABLE}
    assert await balance_of(db, customer) == before
    kinds = sorted(e.kind for e in await entries_of(db, customer) if e.order_id is not None)
    assert kinds == [ledger.CHARGE, ledger.REFUND]
    await assert_ledger_clean(db)


@pytest.mark.parametrize("fault", ["error5xx", "drop"])
async def test_after_an_ambiguous_answer_nothing_else_is_tried(
    two: Two, db: Database, fault: str
) -> None:
    customer = await _customer(db)
    before = await balance_of(db, customer)
    await set_faults(two.sim_a, {fault: 1.0})
    reply = await _order(two, customer)
    order = await get_order(db, reply["order"])  # the customer has an order id: Pending
    assert (order.state, order.provider_id) == ("unknown", DEFAULT)
    assert await sim_calls(two.sim_b) == 0
    assert await balance_of(db, customer) < before  # funds held
    await assert_ledger_clean(db)


async def test_an_ambiguous_answer_after_a_failover_leaves_the_order_unknown_there(
    two: Two, db: Database
) -> None:
    """A refuses for funds, B takes the order but the reply is lost: the order is `unknown`
    on B (recorded there before it was sent), its charge held; A is not asked again."""
    customer = await _customer(db)
    await set_sim_balance(two.sim_a, "0")
    await set_faults(two.sim_b, {"drop": 1.0})
    order = await get_order(db, (await _order(two, customer))["order"])
    assert (order.state, order.provider_id, order.upstream_order_id) == ("unknown", B, None)
    assert order.params["service"] == "9" and await sim_calls(two.sim_a) == 1
    [at_b] = await sim_orders(two.sim_b)
    assert at_b["params"]["link"] == order.params["link"]
    assert len(await _one_charge(db, customer, order.id)) == 1
    await assert_ledger_clean(db)


async def test_a_replayed_idempotency_key_answers_the_failed_over_order(
    two: Two, db: Database
) -> None:
    customer = await _customer(db)
    await set_sim_balance(two.sim_a, "0")
    keyed = {"Idempotency-Key": "bot-retry-1"}
    first = await _order(two, customer, headers=keyed)
    again = await _order(two, customer, headers=keyed)
    assert first == again and "order" in first
    assert (await get_order(db, first["order"])).provider_id == B
    assert len(await sim_orders(two.sim_b)) == 1
    assert len(await _one_charge(db, customer, first["order"])) == 1
    await assert_ledger_clean(db)


async def test_a_refusal_about_the_order_itself_is_final(two: Two, db: Database) -> None:
    """A refuses the quantity (its minimum rose since the last sync): B would refuse it as
    well, so it is not tried; the customer gets A's reason, refunded."""
    customer = await _customer(db)
    before = await balance_of(db, customer)
    changed = await two.sim_a.post("/_sim/catalog", json={"9": {"min": 5000}})
    assert changed.status_code == 200
    reply = await _order(two, customer, quantity=1000)
    assert reply == {"error": "Quantity less than minimal 5000"}
    assert await sim_calls(two.sim_b) == 0
    assert await balance_of(db, customer) == before
    await assert_ledger_clean(db)


async def test_a_failover_never_sells_at_a_loss(two: Two, db: Database) -> None:
    """B sells 14 at far more than the customer pays: with A out of funds the order is
    refused (and refunded) rather than bought at a loss."""
    customer = await _customer(db)
    before = await balance_of(db, customer)
    await set_sim_balance(two.sim_a, "0")
    reply = await _order(two, customer, service=14, quantity=100)
    assert reply == {"error": TEMPORARILY_UNAVAILABLE}
    assert await sim_calls(two.sim_b) == 0
    assert await balance_of(db, customer) == before
    await assert_ledger_clean(db)


async def test_a_disabled_provider_takes_no_order_and_its_offers_stop_pricing(
    two: Two, db: Database
) -> None:
    customer = await _customer(db)
    settings = two.gw.settings
    await ops.update_provider(db, settings, "default", _patch(enabled=False))
    # Local 9 is now priced from B's offer (its reference), and ordered there.
    assert (await _priced(db, 9, customer)).cost == parse_micros(B_RATES[9])
    order = await get_order(db, (await _order(two, customer))["order"])
    assert order.provider_id == B
    assert await sim_calls(two.sim_a) == 0
    await ops.update_provider(db, settings, "default", _patch(enabled=True))
    assert (await _priced(db, 9, customer)).cost == parse_micros("0.0450")


def _patch(**values: Any):  # type: ignore[no-untyped-def]
    from app.admin.schemas import ProviderPatch

    return ProviderPatch(**values)


# --- sync, refill, cancel, resolve per provider -------------------------------------------------


async def _one_on_each(two: Two, db: Database, customer: Customer) -> tuple[int, int]:
    on_a = (await _order(two, customer))["order"]
    await set_sim_balance(two.sim_a, "0")
    on_b = (await _order(two, customer))["order"]
    await set_sim_balance(two.sim_a, "1000")
    assert (await get_order(db, on_a)).provider_id == DEFAULT
    assert (await get_order(db, on_b)).provider_id == B
    return on_a, on_b


async def test_sync_asks_each_order_of_its_own_provider(two: Two, db: Database) -> None:
    customer = await _customer(db)
    on_a, on_b = await _one_on_each(two, db, customer)
    two.clock.advance(30)
    result = await sync_pass(db, two.gw.providers, sending_grace_seconds=60)
    assert (result.failed_batches, result.polled) == (0, 2)
    assert await sim_calls(two.sim_a, "status") == 1
    assert await sim_calls(two.sim_b, "status") == 1
    for order_id in (on_a, on_b):
        order = await get_order(db, order_id)
        assert order.status == "Completed" and order.settled_at is not None
    await assert_ledger_clean(db)


async def test_a_provider_down_delays_only_its_own_orders(two: Two, db: Database) -> None:
    customer = await _customer(db)
    on_a, on_b = await _one_on_each(two, db, customer)
    two.clock.advance(30)
    two.router.down.add(B_HOST)
    result = await sync_pass(db, two.gw.providers, sending_grace_seconds=60)
    assert result.failed_batches == 1
    assert (await get_order(db, on_a)).status == "Completed"
    assert (await get_order(db, on_b)).status == "Pending"
    two.router.down.clear()
    await sync_pass(db, two.gw.providers, sending_grace_seconds=60)
    assert (await get_order(db, on_b)).status == "Completed"
    await assert_ledger_clean(db)


async def test_refill_and_cancel_go_to_the_order_s_provider(two: Two, db: Database) -> None:
    """Service 9 at A (SmartPanel: no cancel flag) cannot be canceled; at B it can: each
    order's cancel is decided by its own provider's offer and sent there."""
    customer = await _customer(db)
    on_a = (await _order(two, customer, link="https://x.test/p/live2"))["order"]
    await set_sim_balance(two.sim_a, "0")
    on_b = (await _order(two, customer, link="https://x.test/p/live"))["order"]
    assert (await get_order(db, on_b)).provider_id == B
    replies = await api(two.client, customer.key, "cancel", orders=f"{on_a},{on_b}")
    by_order = {int(item["order"]): item["cancel"] for item in replies}
    assert by_order[on_b] == 1
    assert isinstance(by_order[on_a], dict)  # not cancelable at A: an error, A not asked
    assert await sim_calls(two.sim_b, "cancel") == 1
    assert await sim_calls(two.sim_a, "cancel") == 0
    await assert_ledger_clean(db)


async def test_resolve_checks_the_answer_with_the_order_s_provider(two: Two, db: Database) -> None:
    customer = await _customer(db)
    await set_faults(two.sim_a, {"drop": 1.0})  # A takes the order, the reply is lost
    unknown = (await _order(two, customer, link="https://x.test/p/lost"))["order"]
    await set_faults(two.sim_a, {"drop": 0.0})
    assert (await get_order(db, unknown)).state == "unknown"
    await set_sim_balance(two.sim_a, "0")
    on_b = await get_order(db, (await _order(two, customer))["order"])
    assert on_b.provider_id == B
    # B's order id is not A's: refused, since A is asked (it does not know it).
    verdict = ResolveIn(upstream_order_id=on_b.upstream_order_id)
    with pytest.raises(OperatorError, match="does not know it"):
        await ops.resolve(db, two.gw.providers, unknown, verdict)
    [at_a] = [o for o in await sim_orders(two.sim_a) if "lost" in o["params"]["link"]]
    resolved = await ops.resolve(
        db, two.gw.providers, unknown, ResolveIn(upstream_order_id=at_a["id"])
    )
    assert (resolved.state, resolved.provider_id) == ("placed", DEFAULT)
    await assert_ledger_clean(db)


# --- operators ----------------------------------------------------------------------------------


async def test_a_provider_key_is_stored_encrypted_and_never_shown(two: Two, db: Database) -> None:
    async with db.read() as conn:
        stored = await conn.scalar(text("SELECT key_encrypted FROM providers WHERE id = 2"))
    assert stored and KEY_B not in stored
    shown = (await ops.show_provider(db, "b")).model_dump_json()
    assert KEY_B not in shown and "fingerprint" in shown


async def test_adding_a_provider_with_a_key_needs_the_secret(
    database_url: str, db: Database
) -> None:
    settings = gateway_settings(database_url)  # no SMMGW_SECRET_KEY
    with pytest.raises(OperatorError, match="SMMGW_SECRET_KEY"):
        await providers.add_provider(
            db, settings, name="c", url="http://c.test/api/v2", key="k" * 10
        )
    assert [v.name for v in await providers.list_providers(db)] == ["default"]


# --- report and metrics by provider -------------------------------------------------------------


async def test_the_report_shows_revenue_cost_and_margin_per_provider(
    two: Two, db: Database
) -> None:
    customer = await _customer(db)
    listing = await services_by_id(two.client, customer.key)
    await _one_on_each(two, db, customer)
    two.clock.advance(30)
    await sync_pass(db, two.gw.providers, sending_grace_seconds=60)
    report = (await ops.report(db, two.gw.settings)).model_dump(mode="json")
    charge = expected_charge(listing[9], 1000)
    by_provider = {line["name"]: line for line in report["by_provider"]}
    for name, rate in (("default", "0.0450"), ("b", B_RATES[9])):
        line = by_provider[name]
        revenue, cost = parse_micros(line["revenue"]), parse_micros(line["upstream_cost"])
        assert (line["orders"], revenue, cost) == (1, charge, _cost(rate, 1000)), line
        assert parse_micros(line["margin"]) == charge - cost
    total = report["total"]
    assert parse_micros(total["margin"]) == sum(
        parse_micros(line["margin"]) for line in by_provider.values()
    )
    await assert_ledger_clean(db)


def _samples(text: str) -> dict[tuple[str, frozenset], float]:  # type: ignore[type-arg]
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_metrics_by_provider(two: Two, db: Database) -> None:
    customer = await _customer(db)
    before = _samples((await two.client.get("/metrics")).text)
    await set_sim_balance(two.sim_a, "0")
    await _order(two, customer)  # refused by default (funds), taken by b
    await set_faults(two.sim_b, {"error5xx": 1.0})
    await _order(two, customer)  # b first now, ambiguous: unknown on b
    await providers.update_provider(db, two.gw.settings, "b", low_balance_threshold=10**12)
    await two.gw.gauges.refresh()  # the snapshot a scrape renders, read now
    after = _samples((await two.client.get("/metrics")).text)

    def moved(name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        return after.get(key, 0.0) - before.get(key, 0.0)

    calls = "smmgw_provider_calls_total"
    assert moved(calls, provider="default", action="add", outcome="refused:error_reply") == 1
    assert moved(calls, provider="b", action="add", outcome="answer") == 1
    assert moved(calls, provider="b", action="add", outcome="ambiguous:http_5xx") == 1
    unknown = "smmgw_provider_orders_unknown"
    assert after[(unknown, frozenset({("provider", "b")}))] == 1
    assert after[(unknown, frozenset({("provider", "default")}))] == 0
    # Balances as the first scrape's refresh heard them, b's below its threshold.
    b_balance = after[
        ("smmgw_provider_balance", frozenset({("provider", "b"), ("currency", "USD")}))
    ]
    assert b_balance > 0
    assert after[("smmgw_provider_low_balance", frozenset({("provider", "b")}))] == 1


# --- a seeded run across both providers, then the proofs ---------------------------------------


@pytest.mark.parametrize("seed", [1, 2])
async def test_a_seeded_run_across_two_providers_keeps_every_proof(
    two: Two, db: Database, seed: int
) -> None:
    """Orders on shared and single-provider services while each provider in turn faults
    (5xx, dropped replies, refusals), runs out of funds and goes down; then every order is
    synced to its end. Proofs: every upstream order at a provider is exactly one gateway
    order on that provider (by upstream id; or by link, for one left `unknown` there), no
    link was bought twice or at two providers, every order was charged once and settled as
    its provider says, the ledger verifies, the report's provider lines add up."""
    rng = random.Random(seed)
    customers = [await _customer(db, f"c{n}") for n in range(3)]
    b_only = OTHER_PROVIDERS_FIRST_ID  # B's first service of its own, sold as it is
    await catalog.set_hidden(db, b_only, False)
    sims = {DEFAULT: (two.sim_a, A_HOST), B: (two.sim_b, B_HOST)}
    links: dict[str, int | None] = {}  # link -> our order id (None: refused)
    for step in range(100):
        action = rng.choices(["add", "faults", "funds", "down", "sync"], [16, 2, 1, 1, 3])[0]
        provider = rng.choice([DEFAULT, B])
        sim, host = sims[provider]
        if action == "add":
            marker = rng.choice(["", "", "sim:complete", "sim:partial", "sim:cancel", "sim:reject"])
            link = f"https://x.test/s{seed}/{step}/{marker}"
            service = rng.choice([9, 9, 9, 5, b_only])
            reply = await _order(two, rng.choice(customers), service=service, link=link)
            links[link] = reply.get("order")
        elif action == "faults":
            kind = rng.choice(["error5xx", "drop", "reject"])
            await set_faults(sim, {kind: rng.choice([0.3, 1.0])} if rng.random() < 0.5 else {})
        elif action == "funds":
            await set_sim_balance(sim, rng.choice(["0", "1000"]))
        elif action == "down":
            two.router.down ^= {host}
        else:
            two.clock.advance(rng.choice([1, 5, 30]))
            await sync_pass(db, two.gw.providers, sending_grace_seconds=60)
    two.router.down.clear()
    for sim, _ in sims.values():
        await set_faults(sim, {})
        await set_sim_balance(sim, "1000")
    for _ in range(5):
        two.clock.advance(60)
        await sync_pass(db, two.gw.providers, sending_grace_seconds=60)

    await assert_ledger_clean(db)
    async with db.read() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT id, provider_id, state, status, upstream_order_id, params, charge,"
                    " refunded, settled_at FROM orders ORDER BY id"
                )
            )
        ).all()
    ours = {row.id: row for row in rows}
    by_link: dict[str, list[Any]] = {}
    for row in rows:
        by_link.setdefault(json.loads(row.params)["link"], []).append(row)
    assert all(len(found) == 1 for found in by_link.values())  # one order per link, ever
    for provider, (sim, _) in sims.items():
        theirs = {o["id"]: o for o in await sim_orders(sim)}
        on_it = {
            row.upstream_order_id: row
            for row in rows
            if row.provider_id == provider and row.upstream_order_id is not None
        }
        assert set(on_it) <= set(theirs)  # nothing recorded there that it does not hold
        for upstream_id, held in theirs.items():
            link = held["params"]["link"]
            [row] = by_link[link]  # bought once: at this provider, by exactly one order
            assert row.provider_id == provider, (link, row)
            if row.upstream_order_id is None:
                assert row.state == "unknown", row  # its reply was lost: the operator's
            else:
                assert (row.upstream_order_id, row.state) == (upstream_id, "placed")
                assert row.status == held["status"] and row.settled_at is not None, row
    for link, order_id in links.items():  # what each customer was told
        if order_id is None:
            assert by_link.get(link, [None])[0] is None or by_link[link][0].state == "rejected"
        else:
            assert ours[order_id].state in ("placed", "unknown")
    report = await ops.report(db, two.gw.settings)
    assert sum(parse_micros(line.margin) for line in report.by_provider) == parse_micros(
        report.total.margin
    )


async def test_recovery_waits_out_the_slowest_provider_s_call(two: Two, db: Database) -> None:
    """The sync loop (the worker's) started before a provider was made slower must not call an
    order still waiting on that provider's call unknown: an operator could then refund an
    order the provider is about to place."""
    customer = await _customer(db)
    _, on_b = await _one_on_each(two, db, customer)
    grace = sending_grace_seconds(two.gw.settings)
    # The worker's loop (app.main.sync_orders_forever gives it these), passes 50 ms apart.
    loop = asyncio.create_task(sync_forever(db, two.gw.providers, 0.05, grace))
    try:
        await asyncio.sleep(0.2)  # the loop is running, with b's timeouts as they were
        await providers.update_provider(db, two.gw.settings, "b", read_timeout_seconds=60.0)
        assert grace < 20 < 60
        # Sent to b 20 s ago and not answered yet (as a slow b leaves it): past the settings'
        # grace, well inside b's own read timeout now.
        async with db.write() as conn:
            await conn.execute(
                text(
                    "UPDATE orders SET state = 'sending', upstream_order_id = NULL,"
                    " updated_at = :at WHERE id = :id"
                ),
                {"at": utcnow() - timedelta(seconds=20), "id": on_b},
            )
        await asyncio.sleep(0.5)  # several passes
    finally:
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop
    assert (await get_order(db, on_b)).state == "sending"
