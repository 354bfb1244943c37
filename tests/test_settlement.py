"""Settlement: final statuses move money exactly once, by DESIGN.md's rules, in both upstream
dialects, and `status` shows what the customer now pays.

Every expectation is computed from the inputs and from what the simulator itself reports
(its `status` answers, its /_sim/orders record of what it keeps); nothing is a magic number.
"""

import pytest
from sync_helpers import (
    SIM_KEY,
    TOPUP,
    Harness,
    assert_status_shape,
    expected_charge,
    partial_refund,
    ratio_refund,
    settings_for,
    sim_remains,
    upstream_cost,
)

from app.money import parse_micros, render
from app.settings import Settings
from app.simulator import SimConfig

SUBSCRIPTION_STATUSES = {"Pending", "In progress", "Active", "Completed", "Partial", "Canceled"}


@pytest.fixture(params=["smartpanel", "standard"])
def sim_config(request: pytest.FixtureRequest) -> SimConfig:
    """Every test here runs against both families of upstream."""
    return SimConfig(key=SIM_KEY, dialect=request.param, tick_seconds=1.0, seed=1)


@pytest.fixture
def settings(database_url: str, sim_config: SimConfig) -> Settings:
    return settings_for(database_url, sim_config)


def status_of(order_id: int, charge: int, status: str, start_count: object, remains: int) -> dict:
    return {
        "order": str(order_id),
        "charge": render(charge, 4),
        "start_count": str(start_count or 0),
        "status": status,
        "remains": str(remains),
        "currency": "USD",
    }


async def assert_settled_for_good(h: Harness, passes: int = 3) -> None:
    """More passes, later: nothing is polled, no entry is written, no balance moves."""
    before = await h.books()
    for _ in range(passes):
        h.clock.advance(5 * h.tick)
        result = await h.sync()
        assert (result.polled, result.settled, result.upstream_calls) == (0, 0, 0)
    assert await h.books() == before
    await h.assert_clean()


async def test_completed_partial_canceled_settle_once(harness: Harness) -> None:
    h = harness
    alice = await h.customer(dialect="standard", markup_bp=2500)
    quantity = 1000
    fates = {"Completed": "sim:complete", "Partial": "sim:partial", "Canceled": "sim:cancel"}
    ids = {
        fate: await h.add(alice, service=5, link=f"https://ig.test/{marker}", quantity=quantity)
        for fate, marker in fates.items()
    }
    charge = expected_charge(5, quantity, alice.markup_bp)
    for oid in ids.values():
        order = await h.order(oid)
        assert (order.charge, order.state, order.status) == (charge, "placed", "Pending")
    assert await h.balance(alice.id) == TOPUP - 3 * charge

    # One tick: every order has started upstream; the pass brings start_count in.
    h.clock.advance(h.tick)
    result = await h.sync()
    assert (result.polled, result.settled, result.upstream_calls) == (3, 0, 1)
    for oid in ids.values():
        upstream_id = (await h.order(oid)).upstream_order_id
        heard = await h.sim_status(upstream_id)
        assert heard["status"] == "In progress"
        reply = await h.status(alice, oid)
        assert_status_shape(reply)
        assert reply == status_of(oid, charge, "In progress", heard["start_count"], quantity)

    # Past the final tick: each settles by its rule, remains as the simulator reports them.
    h.clock.advance(2 * h.tick)
    result = await h.sync()
    assert (result.polled, result.settled) == (3, 3)
    refunds = {}
    for fate, oid in ids.items():
        heard = await h.sim_status((await h.order(oid)).upstream_order_id)
        assert heard["status"] == fate
        remains = min(sim_remains(heard["remains"]), quantity)
        refunds[fate] = {
            "Completed": 0,
            "Partial": partial_refund(charge, remains, quantity),
            "Canceled": charge,
        }[fate]
        order = await h.order(oid)
        assert (order.status, order.refunded) == (fate, refunds[fate])
        assert await h.status(alice, oid) == status_of(
            oid, charge - refunds[fate], fate, heard["start_count"], remains
        )
    assert 0 < refunds["Partial"] < charge
    assert await h.balance(alice.id) == TOPUP - 3 * charge + refunds["Partial"] + charge

    refund_entries = await h.entries(kind="refund")
    assert sorted(refund_entries) == sorted(
        ("refund", refunds[fate], ids[fate], f"refund:{ids[fate]}")
        for fate in ("Partial", "Canceled")
    )
    await assert_settled_for_good(h)


async def test_multi_status_in_both_customer_dialects(harness: Harness) -> None:
    h = harness
    std = await h.customer(dialect="standard")
    sp = await h.customer(dialect="smartpanel")
    mine = await h.add(std, service=14, link="https://ig.test/sim:partial", quantity=400)
    theirs = await h.add(sp, service=14, link="https://ig.test/sim:complete", quantity=400)
    h.clock.advance(3 * h.tick)
    assert (await h.sync()).settled == 2

    for who, own, foreign in ((std, mine, theirs), (sp, theirs, mine)):
        heard = await h.sim_status((await h.order(own)).upstream_order_id)
        remains = min(sim_remains(heard["remains"]), 400)
        charge = expected_charge(14, 400, who.markup_bp)
        refund = partial_refund(charge, remains, 400) if heard["status"] == "Partial" else 0
        expected = status_of(own, charge - refund, heard["status"], heard["start_count"], remains)
        sent = f"{own}, {foreign},999999,abc"
        reply = await h.call(who.key, "status", orders=sent)
        error = (
            "Incorrect order ID" if who is sp else {"error": "Incorrect order ID"}
        )  # SmartPanel's plain string, or the standard object
        assert reply == {str(own): expected, str(foreign): error, "999999": error, "abc": error}
        assert list(reply) == [str(own), str(foreign), "999999", "abc"]
        assert await h.status(who, foreign) == {"error": "Incorrect order ID"}
    await h.assert_clean()


async def test_package_and_comment_package_settle_by_the_upstream_charge_ratio(
    harness: Harness,
) -> None:
    h = harness
    bob = await h.customer(markup_bp=4000)
    package = await h.add(bob, service=102, link="https://ig.test/sim:partial")
    comments = await h.add(
        bob, service=130, link="https://tt.test/sim:partial", comments="one\ntwo\nthree\nfour"
    )
    canceled = await h.add(bob, service=104, link="https://yt.test/sim:cancel")
    h.clock.advance(3 * h.tick)
    result = await h.sync()
    assert result.settled == 3

    sim = await h.sim_orders()
    for oid, sid in ((package, 102), (comments, 130), (canceled, 104)):
        order = await h.order(oid)
        charge = expected_charge(sid, 1, bob.markup_bp)
        cost = upstream_cost(sid, 1)
        assert (order.charge, order.upstream_charge) == (
            charge,
            sim[order.upstream_order_id]["charge_micros"],
        )
        kept = sim[order.upstream_order_id]["charge_micros"]
        if order.status == "Canceled":
            expected = charge
            assert kept == 0
        else:
            assert order.status == "Partial"
            assert 0 < kept < cost  # the upstream really kept only part of its price
            expected = ratio_refund(charge, kept, cost)
        assert order.refunded == expected
        reply = await h.status(bob, oid)
        assert reply["charge"] == render(charge - expected, 4)
        assert reply["status"] == order.status
    spent = sum(expected_charge(s, 1, bob.markup_bp) for s in (102, 130, 104))
    refunded = sum([(await h.order(o)).refunded for o in (package, comments, canceled)])
    assert await h.balance(bob.id) == TOPUP - spent + refunded
    await assert_settled_for_good(h)


@pytest.mark.parametrize("sim_config", ["standard"], indirect=True)  # SmartPanel has none
async def test_subscriptions_settle_by_the_upstream_charge_ratio(harness: Harness) -> None:
    h = harness
    carol = await h.customer(dialect="smartpanel", markup_bp=1000)
    low, high, posts = 100, 300, 4
    sub = {"service": 190, "min": low, "max": high, "delay": 0, "posts": posts}
    partial = await h.add(carol, username="sim:partial-shop", **sub)
    canceled = await h.add(carol, username="sim:cancel-shop", **sub)
    completed = await h.add(carol, username="sim:complete-shop", **sub)
    charge = expected_charge(190, high * posts, carol.markup_bp)
    cost = upstream_cost(190, high * posts)

    h.clock.advance(h.tick)
    await h.sync()
    running = await h.status(carol, partial)
    assert running["status"] in SUBSCRIPTION_STATUSES - {"Completed", "Partial", "Canceled"}
    assert running["charge"] == render(charge, 4)

    h.clock.advance((posts + 3) * h.tick)
    result = await h.sync()
    assert result.settled == 3
    sim = await h.sim_orders()
    kept = sim[(await h.order(partial)).upstream_order_id]["charge_micros"]
    assert 0 < kept < cost
    expected = {partial: ratio_refund(charge, kept, cost), canceled: charge, completed: 0}
    for oid, refund in expected.items():
        order = await h.order(oid)
        assert (order.charge, order.refunded) == (charge, refund)
        reply = await h.status(carol, oid)
        assert_status_shape(reply)
        assert reply["charge"] == render(charge - refund, 4)
    assert [(await h.order(o)).status for o in (partial, canceled, completed)] == [
        "Partial",
        "Canceled",
        "Completed",
    ]
    assert await h.balance(carol.id) == TOPUP - 3 * charge + sum(expected.values())
    await assert_settled_for_good(h)


async def test_dripfeed_partial_parent_settles(harness: Harness, sim_config: SimConfig) -> None:
    """SmartPanel's drip-feed parent reports only its runs: its charge is theirs. The standard
    family reports the parent's remains: the remains rule applies."""
    h = harness
    dave = await h.customer(markup_bp=2000)
    quantity, runs = 500, 3
    oid = await h.add(
        dave,
        service=5,
        link="https://ig.test/sim:partial",
        quantity=quantity,
        runs=runs,
        interval=5,
    )
    done = await h.add(
        dave,
        service=5,
        link="https://ig.test/sim:complete",
        quantity=quantity,
        runs=runs,
        interval=5,
    )
    charge = expected_charge(5, quantity * runs, dave.markup_bp)
    cost = upstream_cost(5, quantity * runs)
    assert (await h.order(oid)).charge == charge

    h.clock.advance((runs + 2) * h.tick)
    await h.reset_stats()
    result = await h.sync()
    assert result.settled == 2
    assert result.upstream_calls == (await h.stats())["status"]
    order = await h.order(oid)
    heard = await h.sim_status(order.upstream_order_id)
    assert heard["status"] == "Partial"
    if sim_config.dialect == "smartpanel":
        assert "charge" not in heard and len(heard["orders"]) == runs
        children = await h.sim_statuses([int(c) for c in heard["orders"]])
        kept = sum(parse_micros(c["charge"]) for c in children.values())
        assert 0 < kept < cost
        expected = ratio_refund(charge, kept, cost)
        # The runs' charges were asked in one more batched call, not one per run.
        assert result.upstream_calls == 2
        assert order.upstream_charge == kept
    else:
        remains = sim_remains(heard["remains"])
        assert 0 < remains < quantity * runs
        expected = partial_refund(charge, remains, quantity * runs)
        assert result.upstream_calls == 1
    assert order.refunded == expected
    assert (await h.order(done)).refunded == 0
    reply = await h.status(dave, oid)
    assert_status_shape(reply)
    assert (reply["status"], reply["charge"]) == ("Partial", render(charge - expected, 4))
    assert await h.balance(dave.id) == TOPUP - 2 * charge + expected
    await assert_settled_for_good(h)


@pytest.mark.parametrize("sim_config", ["smartpanel"], indirect=True)
async def test_dripfeed_partial_parent_shows_what_its_runs_did_not_deliver(
    harness: Harness,
) -> None:
    h = harness
    erin = await h.customer()
    quantity, runs = 500, 3
    oid = await h.add(
        erin,
        service=5,
        link="https://ig.test/sim:partial",
        quantity=quantity,
        runs=runs,
        interval=5,
    )
    h.clock.advance((runs + 2) * h.tick)
    assert (await h.sync()).settled == 1
    heard = await h.sim_status((await h.order(oid)).upstream_order_id)
    children = await h.sim_statuses([int(c) for c in heard["orders"]])
    undelivered = sum(sim_remains(c["remains"]) for c in children.values())
    assert 0 < undelivered < quantity * runs
    reply = await h.status(erin, oid)
    assert reply["status"] == "Partial"
    assert reply["remains"] == str(undelivered)
