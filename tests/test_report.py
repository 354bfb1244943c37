"""The operator's report: revenue (what customers pay after refunds), upstream cost (what the
upstream charges, as it reports it) and margin, per customer and per service, over a period.

Expected figures come from the orders' inputs (rates, markups, quantities) and from what the
simulator reports it keeps; the report is checked against them line by line.
"""

import asyncio
from collections import defaultdict
from datetime import timedelta

import pytest
from sync_helpers import (
    TOPUP,
    Account,
    Harness,
    expected_charge,
    expected_refund,
    settings_for,
    upstream_cost,
)

from app.models import utcnow
from app.report import Report, ReportLine, build_report
from app.settings import Settings
from app.simulator import SimConfig
from app.simulator.catalog import SERVICES


@pytest.fixture
def settings(database_url: str, sim_config: SimConfig) -> Settings:
    return settings_for(database_url, sim_config)


async def place(h: Harness, who: Account, placed: list, **params: object) -> int:
    oid = await h.add(who, **params)
    placed.append((oid, who, params))
    return oid


def lines(figures: dict[int, list[int]], names: dict[int, str]) -> list[ReportLine]:
    return [
        ReportLine(
            key,
            names[key],
            len(rows),
            sum(r for r, _ in rows),
            sum(c for _, c in rows),
            sum(r - c for r, c in rows),
        )
        for key, rows in sorted(figures.items())
    ]


async def expected_report(h: Harness, placed: list, names: dict[int, str]) -> tuple:
    """Per customer and per service: (revenue, upstream cost) of each order, from the inputs
    and the simulator's own account of each order."""
    sim = await h.sim_orders()
    orders = {oid: await h.order(oid) for oid, _, _ in placed}
    heard = await h.sim_statuses([o.upstream_order_id for o in orders.values()])
    by_customer: dict[int, list] = defaultdict(list)
    by_service: dict[int, list] = defaultdict(list)
    for oid, who, params in placed:
        order = orders[oid]
        units = int(params.get("quantity", 1)) * int(params.get("runs", 1))
        charge = expected_charge(int(params["service"]), units, who.markup_bp)
        assert order.charge == charge
        upstream = sim[order.upstream_order_id]
        if order.refreshed_at is None:  # never heard of since: the catalog price stands in
            refunded, cost = 0, upstream_cost(order.service_id, order.quantity)
        else:
            status = heard[order.upstream_order_id]
            final = status["status"] in ("Completed", "Partial", "Canceled")
            refunded = expected_refund(order, status, upstream["charge_micros"]) if final else 0
            cost = upstream["charge_micros"]
        assert order.refunded == refunded
        by_customer[who.id].append((charge - refunded, cost))
        by_service[order.service_id].append((charge - refunded, cost))
    return lines(by_customer, names), lines(by_service, names)


def assert_consistent(report: Report) -> None:
    for side in (report.by_customer, report.by_service):
        assert sum(line.orders for line in side) == report.total.orders
        assert sum(line.revenue for line in side) == report.total.revenue
        assert sum(line.upstream_cost for line in side) == report.total.upstream_cost
        assert sum(line.margin for line in side) == report.total.margin
        assert all(line.margin == line.revenue - line.upstream_cost for line in side)
    assert report.total.margin == report.total.revenue - report.total.upstream_cost


async def test_report_over_a_scenario_and_its_periods(harness: Harness) -> None:
    h = harness
    alice = await h.customer(markup_bp=2500)
    bob = await h.customer(dialect="smartpanel", markup_bp=1000)
    carol = await h.customer(markup_bp=None)  # the default markup (none here)
    names = {alice.id: "customer-1", bob.id: "customer-2", carol.id: "customer-3"}
    names.update({sid: s.name for sid, s in SERVICES.items()})

    early: list = []
    await place(h, alice, early, service=9, link="https://ig.test/sim:complete", quantity=1000)
    await place(h, alice, early, service=14, link="https://ig.test/sim:partial", quantity=400)
    await place(h, alice, early, service=102, link="https://ig.test/sim:partial")
    await place(h, bob, early, service=9, link="https://ig.test/sim:cancel", quantity=600)
    await place(h, bob, early, service=24, link="https://tt.test/sim:complete", quantity=1000)
    await place(
        h,
        bob,
        early,
        service=5,
        link="https://ig.test/sim:complete",
        quantity=500,
        runs=2,
        interval=5,
    )
    refused = await h.call(
        bob.key, "add", service=9, link="https://ig.test/sim:reject", quantity=500
    )
    assert "error" in refused  # refused upstream: refunded, never in the report
    h.clock.advance(4 * h.tick)
    await h.sync()

    await asyncio.sleep(0.01)
    middle = utcnow()
    await asyncio.sleep(0.01)

    late: list = []
    await place(h, alice, late, service=17, link="https://ig.test/sim:complete", quantity=2000)
    await place(h, carol, late, service=9, link="https://ig.test/sim:partial", quantity=800)
    await place(h, carol, late, service=14, link="https://ig.test/sim:complete", quantity=300)
    h.clock.advance(4 * h.tick)
    await h.sync()
    # Placed after the last pass: the upstream has not been heard about it yet.
    await place(h, bob, late, service=24, link="https://tt.test/pending", quantity=2000)

    everything = await build_report(h.db)
    by_customer, by_service = await expected_report(h, early + late, names)
    assert everything.by_customer == by_customer
    assert everything.by_service == by_service
    assert_consistent(everything)
    assert everything.total.orders == len(early) + len(late)
    assert everything.total.revenue == sum(line.revenue for line in by_customer)
    # Money checks out against the ledger too: revenue is what customers have paid.
    spent = [await h.balance(c.id) for c in (alice, bob, carol)]
    assert everything.total.revenue == sum(TOPUP - b for b in spent)
    assert everything.total.margin > 0

    before = await build_report(h.db, until=middle)
    assert (before.by_customer, before.by_service) == await expected_report(h, early, names)
    assert_consistent(before)
    after = await build_report(h.db, since=middle)
    assert (after.by_customer, after.by_service) == await expected_report(h, late, names)
    assert_consistent(after)
    both = await build_report(h.db, since=middle - timedelta(days=1), until=utcnow())
    assert both.total == everything.total
    assert before.total.revenue + after.total.revenue == everything.total.revenue
    assert before.total.upstream_cost + after.total.upstream_cost == (
        everything.total.upstream_cost
    )

    nothing = await build_report(h.db, since=utcnow() + timedelta(hours=1))
    assert (nothing.by_customer, nothing.by_service) == ([], [])
    assert (nothing.total.orders, nothing.total.revenue, nothing.total.margin) == (0, 0, 0)
    await h.assert_clean()


async def test_a_canceled_dripfeed_parent_costs_nothing(harness: Harness) -> None:
    """SmartPanel reports no charge for a drip-feed parent; once it is settled Canceled and
    refunded in full, the upstream kept nothing of it, and the report says so."""
    h = harness
    dave = await h.customer(markup_bp=2000)
    oid = await h.add(
        dave, service=5, link="https://ig.test/sim:cancel", quantity=500, runs=3, interval=0
    )
    for _ in range(6):
        h.clock.advance(h.tick)
        await h.sync()
    order = await h.order(oid)
    assert order.status == "Canceled" and order.refunded == order.charge > 0
    assert (await h.sim_orders())[order.upstream_order_id]["charge_micros"] == 0
    report = await build_report(h.db)
    assert (report.total.orders, report.total.revenue, report.total.upstream_cost) == (1, 0, 0)
    assert report.total.margin == 0
    await h.assert_clean()
