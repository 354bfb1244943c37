"""The catalog: synced from the simulator, priced per customer by the precedence of DESIGN.md,
never sold below cost without consent, and kept through upstream faults.

Runs on SQLite and PostgreSQL. Expected prices are computed here with Decimal from the
simulator's own answer, never copied from the code under test.
"""

import asyncio
import dataclasses
import itertools
from collections.abc import AsyncIterator
from decimal import ROUND_CEILING, Decimal

import httpx
import pytest
from conftest import SIM_KEY, gateway_settings
from fastapi import FastAPI
from sqlalchemy import func, select

from app import contract
from app.catalog import (
    LAST_ERROR,
    SYNCED_AT,
    Rule,
    catalog_state,
    clear_price,
    customer_catalog,
    list_services,
    priced_service,
    rename,
    resolve_rate,
    set_hidden,
    set_price,
    sync_catalog,
)
from app.customers import create_customer
from app.db import Database
from app.errors import NotFound, OperatorError
from app.models import PriceRule, Service
from app.money import MICROS, parse_micros
from app.simulator import SimConfig, create_simulator_app
from app.simulator.catalog import CATALOG
from app.upstream import UpstreamClient

LISTED = [s for s in CATALOG if s.listed]  # what the simulator's `services` shows
FOLLOWERS = 5  # a Default service of the simulator's catalog, rate 1.0200


def marked_up(cost_micros: int, percent: str) -> int:
    exact = Decimal(cost_micros) * (1 + Decimal(percent) / 100)
    return int(exact.to_integral_value(rounding=ROUND_CEILING))


def sim_rate(item: dict[str, object]) -> int:
    return int(Decimal(str(item["rate"])) * MICROS)


def upstream_lists(simulator: FastAPI, services: list) -> None:
    """Change what the simulator lists in `services` (its price list), as a panel's operator
    would (tests/test_simulator.py covers its /_sim/catalog endpoint doing the same)."""
    simulator.state.sim.catalog = {s.id: s for s in services}


def with_rate(service_id: int, rate: str) -> list:
    return [dataclasses.replace(s, rate=rate) if s.id == service_id else s for s in CATALOG]


async def rates(db: Database, customer_id: int, markup_bp: int | None, default_bp: int = 0):
    return {s.id: s.rate for s in await customer_catalog(db, customer_id, markup_bp, default_bp)}


@pytest.fixture
async def synced(db: Database, upstream: UpstreamClient) -> None:
    result = await sync_catalog(db, upstream)
    assert result.ok, result.error


async def service_rows(db: Database) -> dict[int, dict]:
    async with db.read() as conn:
        rows = (await conn.execute(select(Service))).mappings().all()
    return {row["id"]: dict(row) for row in rows}


# --- syncing --------------------------------------------------------------------------------


async def test_sync_copies_the_simulators_catalog(
    db: Database, upstream: UpstreamClient, sim_services: list[dict]
) -> None:
    result = await sync_catalog(db, upstream)
    assert result.ok and result.error is None
    assert result.services == len(sim_services)
    assert result.dropped == 0

    rows = await service_rows(db)
    assert set(rows) == {int(str(item["service"])) for item in sim_services}
    assert {row["type"] for row in rows.values()} == set(contract.SERVICE_TYPES)
    for item in sim_services:
        row = rows[int(str(item["service"]))]
        assert row["name"] == item["name"]
        assert row["category"] == item["category"]
        assert contract.smartpanel_type(row["type"]) == item["type"]
        assert row["rate"] == sim_rate(item)
        assert (row["min"], row["max"]) == (int(str(item["min"])), int(str(item["max"])))
        assert row["dripfeed"] is (item["dripfeed"] == "1")
        assert row["description"] == item.get("desc")
        # SmartPanel lists no refill/cancel: the gateway promises neither.
        assert row["refill"] is False and row["cancel"] is False
        assert row["upstream_listed"] is True and row["hidden"] is False

    state = await catalog_state(db)
    assert state[SYNCED_AT] and state[LAST_ERROR] == ""


async def test_sync_from_a_standard_panel_keeps_refill_and_cancel(database_url: str, db: Database):
    standard = create_simulator_app(SimConfig(key=SIM_KEY, dialect="standard", seed=1))
    transport = httpx.ASGITransport(app=standard)
    async with httpx.AsyncClient(transport=transport, base_url="http://upstream.test") as client:
        answer = (await client.post("/api/v2", data={"key": SIM_KEY, "action": "services"})).json()
    async with UpstreamClient.from_settings(
        gateway_settings(database_url, upstream_url="http://upstream.test/api/v2"),
        transport=transport,
    ) as upstream:
        assert (await sync_catalog(db, upstream)).ok

    rows = await service_rows(db)
    assert len(rows) == len(answer)
    for item in answer:
        row = rows[item["service"]]
        assert (row["refill"], row["cancel"], row["dripfeed"]) == (
            item["refill"],
            item["cancel"],
            item["dripfeed"],
        )
        assert row["type"] == item["type"]
        assert row["rate"] == sim_rate(item)
    # Both flags occur both ways, so the comparison above saw real values.
    assert {r["refill"] for r in rows.values()} == {True, False}
    assert {r["cancel"] for r in rows.values()} == {True, False}


async def test_syncing_again_changes_nothing(db: Database, upstream: UpstreamClient) -> None:
    assert (await sync_catalog(db, upstream)).ok
    before = await service_rows(db)
    again = await sync_catalog(db, upstream)
    assert again.ok and again.dropped == 0
    after = await service_rows(db)

    def without_time(rows: dict[int, dict]) -> dict[int, dict]:
        return {k: {c: v for c, v in r.items() if c != "updated_at"} for k, r in rows.items()}

    assert without_time(after) == without_time(before)


# --- pricing: the precedence chain ----------------------------------------------------------

COST = parse_micros("1.02")
LEVELS = (
    "customer_fixed",
    "customer_rule_markup",
    "customer_markup",
    "service_fixed",
    "service_markup",
    "default",
)
# A distinct price at every level, each at or above cost.
VALUES = {
    "customer_fixed": parse_micros("1.61"),
    "customer_rule_markup": "40",
    "customer_markup": "30",
    "service_fixed": parse_micros("1.43"),
    "service_markup": "20",
    "default": "10",
}


def expected_at(level: str) -> int:
    value = VALUES[level]
    return value if isinstance(value, int) else marked_up(COST, value)


def resolve_with(present: set[str]) -> int | None:
    def bp(level: str) -> int:
        return int(Decimal(str(VALUES[level])) * 100)

    customer_rule = None
    if {"customer_fixed", "customer_rule_markup"} & present:
        customer_rule = Rule(
            VALUES["customer_fixed"] if "customer_fixed" in present else None,
            bp("customer_rule_markup") if "customer_rule_markup" in present else None,
            False,
        )
    service_rule = None
    if {"service_fixed", "service_markup"} & present:
        service_rule = Rule(
            VALUES["service_fixed"] if "service_fixed" in present else None,
            bp("service_markup") if "service_markup" in present else None,
            False,
        )
    return resolve_rate(
        COST,
        customer_rule=customer_rule,
        customer_markup_bp=bp("customer_markup") if "customer_markup" in present else None,
        service_rule=service_rule,
        default_markup_bp=bp("default"),
    )


@pytest.mark.parametrize(
    "present",
    [set(combo) for n in range(len(LEVELS)) for combo in itertools.combinations(LEVELS[:-1], n)],
    ids=lambda present: "+".join(sorted(present)) or "default-only",
)
def test_most_specific_level_wins(present: set[str]) -> None:
    """Every combination of levels: the first present one in the chain decides."""
    winner = next(level for level in LEVELS if level in present or level == "default")
    assert resolve_with(present) == expected_at(winner)


def test_values_of_the_levels_are_distinct() -> None:
    # Otherwise the precedence test could pass while picking the wrong level.
    assert len({expected_at(level) for level in LEVELS}) == len(LEVELS)
    assert all(expected_at(level) >= COST for level in LEVELS)


@pytest.mark.parametrize(
    ("level", "below"),
    [
        ("customer_rule", Rule(COST - 1, None, False)),
        ("customer_rule", Rule(None, -1, False)),
        ("service_rule", Rule(COST - 1, None, False)),
        ("service_rule", Rule(None, -500, False)),
    ],
)
def test_below_cost_rule_suspends_unless_consented(level: str, below: Rule) -> None:
    def resolve(rule: Rule) -> int | None:
        return resolve_rate(
            COST,
            customer_rule=rule if level == "customer_rule" else None,
            customer_markup_bp=None,
            service_rule=rule if level == "service_rule" else None,
            default_markup_bp=2500,
        )

    assert resolve(below) is None
    consented = dataclasses.replace(below, below_cost_ok=True)
    expected = (
        below.fixed_rate
        if below.fixed_rate is not None
        else marked_up(COST, str(Decimal(below.markup_bp or 0) / 100))
    )
    assert resolve(consented) == expected
    assert expected < COST


@pytest.mark.parametrize("where", ["customer", "default"])
def test_negative_markups_suspend(where: str) -> None:
    rate = resolve_rate(
        COST,
        customer_rule=None,
        customer_markup_bp=-100 if where == "customer" else None,
        service_rule=None,
        default_markup_bp=-100 if where == "default" else 0,
    )
    assert rate is None


# The same chain, stored in the database. A customer's rule for a service is ONE row (a fixed
# rate or a markup), and so is the rule for everyone: each case sets its level and every
# less specific level that can coexist with it.
DB_CASES = {
    "customer_fixed": ("customer_fixed", "customer_markup", "service_fixed"),
    "customer_rule_markup": ("customer_rule_markup", "customer_markup", "service_markup"),
    "customer_markup": ("customer_markup", "service_fixed"),
    "customer_markup_over_service_markup": ("customer_markup", "service_markup"),
    "service_fixed": ("service_fixed",),
    "service_markup": ("service_markup",),
    "default": (),
}


@pytest.mark.parametrize("case", list(DB_CASES))
async def test_precedence_in_the_database(db: Database, synced: None, case: str) -> None:
    present = DB_CASES[case]

    def bp(level: str) -> int:
        return int(Decimal(str(VALUES[level])) * 100)

    alice_markup = bp("customer_markup") if "customer_markup" in present else None
    alice, _ = await create_customer(db, "Alice", "standard", markup_bp=alice_markup)
    bob, _ = await create_customer(db, "Bob", "standard")  # no markup of his own

    if "customer_fixed" in present:
        await set_price(db, FOLLOWERS, customer_id=alice, fixed_rate=VALUES["customer_fixed"])
    if "customer_rule_markup" in present:
        await set_price(db, FOLLOWERS, customer_id=alice, markup_bp=bp("customer_rule_markup"))
    if "service_fixed" in present:
        await set_price(db, FOLLOWERS, fixed_rate=VALUES["service_fixed"])
    if "service_markup" in present:
        await set_price(db, FOLLOWERS, markup_bp=bp("service_markup"))

    default_bp = bp("default")
    alice_rates = await rates(db, alice, alice_markup, default_bp)
    winner = present[0] if present else "default"
    assert alice_rates[FOLLOWERS] == expected_at(winner)
    one = await priced_service(db, FOLLOWERS, alice, alice_markup, default_bp)
    assert one is not None and one.rate == expected_at(winner) and one.cost == COST

    # Bob has no rule and no markup of his own: he gets the rule for everyone, or the default.
    bob_winner = next((lv for lv in present if lv.startswith("service")), "default")
    assert (await rates(db, bob, None, default_bp))[FOLLOWERS] == expected_at(bob_winner)

    # Other services are untouched by a rule for this one.
    costs = {sid: row["rate"] for sid, row in (await service_rows(db)).items()}
    percent = str(VALUES["customer_markup"] if alice_markup else VALUES["default"])
    assert len(alice_rates) == len(costs)
    for service_id, rate in alice_rates.items():
        if service_id != FOLLOWERS:
            assert rate == marked_up(costs[service_id], percent)


async def test_default_markup_prices_every_service(
    db: Database, synced: None, sim_services: list[dict]
) -> None:
    customer, _ = await create_customer(db, "Carol", "standard")
    got = await rates(db, customer, None, default_bp=1250)
    assert got == {int(str(s["service"])): marked_up(sim_rate(s), "12.5") for s in sim_services}


async def test_clearing_a_rule_falls_back_to_the_next_level(db: Database, synced: None) -> None:
    customer, _ = await create_customer(db, "Dan", "standard", markup_bp=3000)
    await set_price(db, FOLLOWERS, customer_id=customer, fixed_rate=parse_micros("2"))
    assert (await rates(db, customer, 3000))[FOLLOWERS] == parse_micros("2")
    await clear_price(db, FOLLOWERS, customer_id=customer)
    assert (await rates(db, customer, 3000))[FOLLOWERS] == marked_up(COST, "30")
    with pytest.raises(NotFound):
        await clear_price(db, FOLLOWERS, customer_id=customer)


async def test_setting_a_rule_again_replaces_it(db: Database, synced: None) -> None:
    await set_price(db, FOLLOWERS, markup_bp=1000)
    await set_price(db, FOLLOWERS, fixed_rate=parse_micros("1.5"))
    async with db.read() as conn:
        count = await conn.scalar(
            select(func.count()).select_from(PriceRule).where(PriceRule.service_id == FOLLOWERS)
        )
    assert count == 1
    views = {v.id: v for v in await list_services(db, 0)}
    assert views[FOLLOWERS].price == parse_micros("1.5")


@pytest.mark.parametrize("personal", [False, True])
async def test_concurrent_pricing_leaves_exactly_one_rule(
    db: Database, synced: None, personal: bool
) -> None:
    """Operators (or instances) pricing one service at once: exactly one rule stands, it is
    one that a caller was told succeeded, and a caller that lost is told so in one line."""
    customer, _ = await create_customer(db, "Pat", "standard")
    who = customer if personal else None
    markups = [100 * i for i in range(1, 11)]
    results = await asyncio.gather(
        *(set_price(db, FOLLOWERS, customer_id=who, markup_bp=m) for m in markups),
        return_exceptions=True,
    )
    failures = [r for r in results if isinstance(r, BaseException)]
    assert all(isinstance(f, OperatorError) for f in failures), failures
    succeeded = [m for m, r in zip(markups, results, strict=True) if r is None]
    assert succeeded
    who_clause = (
        PriceRule.customer_id.is_(None) if who is None else PriceRule.customer_id == customer
    )
    async with db.read() as conn:
        rules = (
            await conn.execute(
                select(PriceRule.markup_bp).where(PriceRule.service_id == FOLLOWERS, who_clause)
            )
        ).all()
    assert len(rules) == 1
    assert rules[0].markup_bp in succeeded
    price = (await rates(db, customer, None))[FOLLOWERS]
    assert price == marked_up(COST, str(Decimal(rules[0].markup_bp) / 100))


async def test_price_rules_are_validated(db: Database, synced: None) -> None:
    customer, _ = await create_customer(db, "Eve", "standard")
    with pytest.raises(OperatorError):
        await set_price(db, FOLLOWERS)  # neither
    with pytest.raises(OperatorError):
        await set_price(db, FOLLOWERS, fixed_rate=COST, markup_bp=100)  # both
    with pytest.raises(OperatorError):
        await set_price(db, FOLLOWERS, fixed_rate=0, below_cost_ok=True)
    with pytest.raises(OperatorError):
        await set_price(db, FOLLOWERS, markup_bp=-1)
    with pytest.raises(NotFound):
        await set_price(db, 999_999, markup_bp=100)
    with pytest.raises(NotFound):
        await set_price(db, FOLLOWERS, customer_id=999, markup_bp=100)
    async with db.read() as conn:
        assert await conn.scalar(select(func.count()).select_from(PriceRule)) == 0
    assert (await rates(db, customer, None))[FOLLOWERS] == COST


# --- never below cost without consent -------------------------------------------------------


@pytest.mark.parametrize("personal", [False, True])
async def test_fixed_price_below_cost_is_refused_without_consent(
    db: Database, synced: None, personal: bool
) -> None:
    customer, _ = await create_customer(db, "Fay", "standard")
    who = customer if personal else None
    with pytest.raises(OperatorError):
        await set_price(db, FOLLOWERS, customer_id=who, fixed_rate=COST - 1)
    assert (await rates(db, customer, None))[FOLLOWERS] == COST

    await set_price(db, FOLLOWERS, customer_id=who, fixed_rate=COST - 1, below_cost_ok=True)
    assert (await rates(db, customer, None))[FOLLOWERS] == COST - 1
    if not personal:
        views = {v.id: v for v in await list_services(db, 0)}
        assert views[FOLLOWERS].price == COST - 1


async def test_upstream_price_rise_flows_through_markups_and_suspends_fixed_prices(
    db: Database, upstream: UpstreamClient, simulator: FastAPI
) -> None:
    assert (await sync_catalog(db, upstream)).ok
    markup_customer, _ = await create_customer(db, "Gus", "standard", markup_bp=2500)
    fixed_customer, _ = await create_customer(db, "Hal", "standard")
    likes = 14
    await set_price(db, FOLLOWERS, fixed_rate=parse_micros("1.50"))  # above the cost of 1.02
    await set_price(db, likes, customer_id=fixed_customer, fixed_rate=parse_micros("0.20"))
    assert (await rates(db, fixed_customer, None))[FOLLOWERS] == parse_micros("1.50")
    assert (await rates(db, fixed_customer, None))[likes] == parse_micros("0.20")

    # The upstream raises both prices above the fixed ones.
    rises = {FOLLOWERS: "1.7000", likes: "0.2500"}
    risen = [dataclasses.replace(s, rate=rises.get(s.id, s.rate)) for s in CATALOG]
    upstream_lists(simulator, risen)
    assert (await sync_catalog(db, upstream)).ok

    new_cost = parse_micros(rises[FOLLOWERS])
    # A percentage markup follows the new cost at once (the customer markup wins over the
    # rule for everyone).
    assert (await rates(db, markup_customer, 2500))[FOLLOWERS] == marked_up(new_cost, "25")
    # The fixed prices are now below cost: suspended, not sold at a loss.
    fixed_rates = await rates(db, fixed_customer, None)
    assert FOLLOWERS not in fixed_rates
    assert likes not in fixed_rates
    assert await priced_service(db, FOLLOWERS, fixed_customer, None, 0) is None
    views = {v.id: v for v in await list_services(db, 0)}
    assert views[FOLLOWERS].price is None
    assert views[FOLLOWERS].cost == new_cost
    # A service without rules still sells, at the new cost plus the default markup (0 here).
    assert fixed_rates[9] == next(parse_micros(s.rate) for s in CATALOG if s.id == 9)


async def test_consented_fixed_price_keeps_selling_after_a_rise(
    db: Database, upstream: UpstreamClient, simulator: FastAPI
) -> None:
    assert (await sync_catalog(db, upstream)).ok
    customer, _ = await create_customer(db, "Ida", "standard")
    await set_price(db, FOLLOWERS, fixed_rate=parse_micros("1.10"), below_cost_ok=True)
    upstream_lists(simulator, with_rate(FOLLOWERS, "1.3000"))
    assert (await sync_catalog(db, upstream)).ok
    assert (await rates(db, customer, None))[FOLLOWERS] == parse_micros("1.10")


async def test_dropped_service_is_hidden_and_returns_when_listed_again(
    db: Database, upstream: UpstreamClient, simulator: FastAPI
) -> None:
    assert (await sync_catalog(db, upstream)).ok
    customer, _ = await create_customer(db, "Jo", "standard")

    upstream_lists(simulator, [s for s in LISTED if s.id != FOLLOWERS])
    result = await sync_catalog(db, upstream)
    assert result.ok and result.dropped == 1 and result.services == len(LISTED) - 1

    assert FOLLOWERS not in await rates(db, customer, None)
    assert await priced_service(db, FOLLOWERS, customer, None, 0) is None
    views = {v.id: v for v in await list_services(db, 0)}
    assert views[FOLLOWERS].upstream_listed is False  # kept for old orders, not sold
    assert len(await rates(db, customer, None)) == len(LISTED) - 1

    upstream_lists(simulator, list(CATALOG))
    result = await sync_catalog(db, upstream)
    assert result.ok and result.dropped == 0
    assert FOLLOWERS in await rates(db, customer, None)


async def test_an_empty_upstream_catalog_keeps_the_last_one(
    db: Database, upstream: UpstreamClient, simulator: FastAPI
) -> None:
    assert (await sync_catalog(db, upstream)).ok
    customer, _ = await create_customer(db, "Kim", "standard")
    before = await rates(db, customer, None)
    upstream_lists(simulator, [])
    result = await sync_catalog(db, upstream)
    assert not result.ok and result.error
    assert await rates(db, customer, None) == before
    assert (await catalog_state(db))[LAST_ERROR] == result.error


# --- the operator's presentation ------------------------------------------------------------


async def test_hide_show_and_rename(db: Database, upstream: UpstreamClient) -> None:
    assert (await sync_catalog(db, upstream)).ok
    customer, _ = await create_customer(db, "Lee", "standard")
    upstream_name = (await service_rows(db))[FOLLOWERS]["name"]

    await set_hidden(db, FOLLOWERS, True)
    assert FOLLOWERS not in await rates(db, customer, None)
    assert await priced_service(db, FOLLOWERS, customer, None, 0) is None
    assert {v.id: v for v in await list_services(db, 0)}[FOLLOWERS].hidden is True

    # A re-sync does not undo the operator's choice.
    assert (await sync_catalog(db, upstream)).ok
    assert FOLLOWERS not in await rates(db, customer, None)

    await set_hidden(db, FOLLOWERS, False)
    assert FOLLOWERS in await rates(db, customer, None)

    await rename(db, FOLLOWERS, name="Real Followers", category="Best sellers")
    assert (await sync_catalog(db, upstream)).ok  # survives a re-sync too
    seen = {s.id: s for s in await customer_catalog(db, customer, None, 0)}[FOLLOWERS]
    assert (seen.name, seen.category) == ("Real Followers", "Best sellers")
    view = {v.id: v for v in await list_services(db, 0)}[FOLLOWERS]
    assert (view.name, view.upstream_name) == ("Real Followers", upstream_name)

    await rename(db, FOLLOWERS, name="")  # back to the upstream's name; category kept
    seen = {s.id: s for s in await customer_catalog(db, customer, None, 0)}[FOLLOWERS]
    assert (seen.name, seen.category) == (upstream_name, "Best sellers")

    with pytest.raises(OperatorError):
        await rename(db, FOLLOWERS)
    with pytest.raises(NotFound):
        await set_hidden(db, 999_999, True)
    with pytest.raises(NotFound):
        await rename(db, 999_999, name="x")


# --- upstream faults ------------------------------------------------------------------------


@pytest.fixture
async def impatient_upstream(
    database_url: str, simulator: FastAPI
) -> AsyncIterator[UpstreamClient]:
    """Short timeouts, so a reply that never comes costs a fraction of a second."""
    settings = gateway_settings(
        database_url, upstream_timeout_seconds=0.2, upstream_connect_timeout_seconds=0.1
    )
    async with UpstreamClient.from_settings(
        settings, transport=httpx.ASGITransport(app=simulator)
    ) as client:
        yield client


@pytest.mark.parametrize(
    "fault", ["error5xx", "html", "garbage", "reject", "drop", "timeout_after_accept"]
)
async def test_upstream_faults_keep_the_last_good_catalog(
    db: Database,
    impatient_upstream: UpstreamClient,
    sim_client: httpx.AsyncClient,
    fault: str,
) -> None:
    assert (await sync_catalog(db, impatient_upstream)).ok
    customer, _ = await create_customer(db, "Max", "smartpanel", markup_bp=2500)
    await set_hidden(db, 9, True)
    good = await customer_catalog(db, customer, 2500, 0)
    good_rows = await service_rows(db)

    response = await sim_client.post("/_sim/faults", json={fault: 1.0})
    assert response.status_code == 200 and response.json() == {fault: 1.0}

    result = await sync_catalog(db, impatient_upstream)
    assert not result.ok
    assert result.error
    assert SIM_KEY not in result.error
    assert await customer_catalog(db, customer, 2500, 0) == good
    assert await service_rows(db) == good_rows
    assert (await catalog_state(db))[LAST_ERROR] == result.error

    assert (await sim_client.post("/_sim/faults", json={})).json() == {}
    recovered = await sync_catalog(db, impatient_upstream)
    assert recovered.ok and recovered.services == len(good_rows)
    assert (await catalog_state(db))[LAST_ERROR] == ""
    assert await customer_catalog(db, customer, 2500, 0) == good


async def test_a_first_sync_that_fails_leaves_an_empty_catalog(
    db: Database, impatient_upstream: UpstreamClient, sim_client: httpx.AsyncClient
) -> None:
    await sim_client.post("/_sim/faults", json={"error5xx": 1.0})
    result = await sync_catalog(db, impatient_upstream)
    assert not result.ok
    customer, _ = await create_customer(db, "Ned", "standard")
    assert await customer_catalog(db, customer, None, 0) == []
