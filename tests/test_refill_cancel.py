"""refill, refill_status and cancel through the contract, against a standard-family simulator
(the family that has them) and a SmartPanel one (which has neither).

Exact reply shapes (CONTRACT.md), our own refill ids, other customers' and unknown ids refused
as if they did not exist, services without the feature refused without asking the upstream,
and a cancel's refund arriving once, through settlement.
"""

import asyncio

import pytest
from sync_helpers import SIM_KEY, TOPUP, Harness, expected_charge, settings_for

from app.money import render
from app.settings import Settings
from app.simulator import SimConfig

INCORRECT_ORDER = {"error": "Incorrect order ID"}
INCORRECT_REFILL = {"error": "Incorrect refill ID"}
NOT_REFILLABLE = {"error": "Order not eligible for refill"}
NOT_CANCELABLE = {"error": "Order not eligible for cancel"}

# The simulator's catalog: 10 refill+cancel, 5 refill only, 9 cancel only, 17 neither.
BOTH, REFILL_ONLY, CANCEL_ONLY, NEITHER = 10, 5, 9, 17


@pytest.fixture(params=["standard"])
def sim_config(request: pytest.FixtureRequest) -> SimConfig:
    return SimConfig(key=SIM_KEY, dialect=request.param, tick_seconds=1.0, seed=3)


@pytest.fixture
def settings(database_url: str, sim_config: SimConfig, request: pytest.FixtureRequest) -> Settings:
    return settings_for(database_url, sim_config, **getattr(request, "param", {}))


async def calls(h: Harness, action: str) -> int:
    return (await h.stats()).get(action, 0)


async def test_refill_single_and_multi(harness: Harness) -> None:
    h = harness
    alice, bob = await h.customer(), await h.customer()
    done = await h.add(alice, service=BOTH, link="https://ig.test/sim:complete", quantity=1000)
    partial = await h.add(
        alice, service=REFILL_ONLY, link="https://ig.test/sim:partial", quantity=500
    )
    no_refill = await h.add(
        alice, service=CANCEL_ONLY, link="https://ig.test/sim:complete", quantity=500
    )
    foreign = await h.add(bob, service=BOTH, link="https://ig.test/sim:complete", quantity=1000)
    h.clock.advance(3 * h.tick)
    assert (await h.sync()).settled == 4
    running = await h.add(alice, service=BOTH, link="https://ig.test/b", quantity=1000)
    await h.reset_stats()

    first = await h.call(alice.key, "refill", order=done)
    assert list(first) == ["refill"] and first["refill"].isdigit()
    assert await calls(h, "refill") == 1

    reply = await h.call(
        alice.key, "refill", orders=f"{partial},{no_refill},{foreign},999999,abc,{running}"
    )
    assert isinstance(reply, list) and len(reply) == 6
    second = reply[0]["refill"]
    assert isinstance(second, int)
    assert reply == [
        {"order": partial, "refill": second},
        {"order": no_refill, "refill": NOT_REFILLABLE},  # the service has no refill
        {"order": foreign, "refill": INCORRECT_ORDER},  # bob's: as if it did not exist
        {"order": 999999, "refill": INCORRECT_ORDER},
        {"order": "abc", "refill": INCORRECT_ORDER},
        {"order": running, "refill": NOT_REFILLABLE},  # the upstream's answer: not finished
    ]
    # Only the two orders whose services have refill were asked about.
    assert await calls(h, "refill") == 3

    for order in (no_refill, foreign, 424242):
        single = await h.call(alice.key, "refill", order=order)
        assert single == (NOT_REFILLABLE if order == no_refill else INCORRECT_ORDER)
    assert await calls(h, "refill") == 3

    # Our own refill ids, not the upstream's; each names the refill the upstream made.
    ours = [int(first["refill"]), second]
    upstream_refills = h.simulator.state.sim.refills
    assert len(upstream_refills) == 2
    upstream_of = {
        (await h.order(done)).upstream_order_id,
        (await h.order(partial)).upstream_order_id,
    }
    assert {r.order_id for r in upstream_refills.values()} == upstream_of
    assert not set(ours) & set(upstream_refills)
    assert ours == sorted(ours) and len(set(ours)) == 2
    # No money moves on a refill.
    assert await h.balance(bob.id) == TOPUP - expected_charge(BOTH, 1000, bob.markup_bp)
    await h.assert_clean()


async def test_refill_status_single_and_multi_cached_between_syncs(harness: Harness) -> None:
    h = harness
    alice, bob = await h.customer(), await h.customer()
    mine = await h.add(alice, service=BOTH, link="https://ig.test/sim:complete", quantity=1000)
    theirs = await h.add(bob, service=BOTH, link="https://ig.test/sim:complete", quantity=1000)
    h.clock.advance(3 * h.tick)
    await h.sync()
    refill = int((await h.call(alice.key, "refill", order=mine))["refill"])
    bobs = int((await h.call(bob.key, "refill", order=theirs))["refill"])
    await h.reset_stats()

    assert await h.call(alice.key, "refill_status", refill=refill) == {"status": "Pending"}
    assert await calls(h, "refill_status") == 1
    reply = await h.call(alice.key, "refill_status", refills=f"{refill},{bobs},31337,x")
    assert reply == [
        {"refill": refill, "status": "Pending"},
        {"refill": bobs, "status": INCORRECT_REFILL},
        {"refill": 31337, "status": INCORRECT_REFILL},
        {"refill": "x", "status": INCORRECT_REFILL},
    ]
    assert await h.call(alice.key, "refill_status", refill=bobs) == INCORRECT_REFILL
    assert await h.call(alice.key, "refill_status", refill=31337) == INCORRECT_REFILL
    # Answered from our table within the sync interval: no more upstream calls.
    h.clock.advance(3 * h.tick)
    assert await h.call(alice.key, "refill_status", refill=refill) == {"status": "Pending"}
    assert await calls(h, "refill_status") == 1


@pytest.mark.parametrize("settings", [{"sync_interval_seconds": 0.05}], indirect=True)
async def test_refill_status_follows_the_upstream_once_stale(harness: Harness) -> None:
    h = harness
    alice = await h.customer()
    order = await h.add(
        alice, service=REFILL_ONLY, link="https://ig.test/sim:partial", quantity=500
    )
    h.clock.advance(3 * h.tick)
    await h.sync()
    refill = int((await h.call(alice.key, "refill", order=order))["refill"])
    seen = []
    for _ in range(3):
        await asyncio.sleep(0.06)  # older than the sync interval: asked again
        seen.append((await h.call(alice.key, "refill_status", refill=refill))["status"])
        h.clock.advance(h.tick)
    assert seen == ["Pending", "In progress", "Completed"]
    assert await h.call(alice.key, "refill_status", refills=str(refill)) == [
        {"refill": refill, "status": "Completed"}
    ]


async def test_cancel_refunds_once_through_settlement(harness: Harness) -> None:
    h = harness
    alice, bob = await h.customer(), await h.customer()
    finished = await h.add(
        alice, service=CANCEL_ONLY, link="https://ig.test/sim:complete", quantity=500
    )
    h.clock.advance(3 * h.tick)
    await h.sync()
    assert (await h.order(finished)).status == "Completed"

    # Still running when the customer changes their mind.
    first = await h.add(alice, service=CANCEL_ONLY, link="https://ig.test/e", quantity=600)
    second = await h.add(alice, service=BOTH, link="https://ig.test/f", quantity=1000)
    no_cancel = await h.add(
        alice, service=REFILL_ONLY, link="https://ig.test/sim:complete", quantity=500
    )
    foreign = await h.add(bob, service=CANCEL_ONLY, link="https://ig.test/h", quantity=500)
    fresh = {o: (await h.order(o)).charge for o in (first, second, no_cancel)}
    assert fresh[first] == expected_charge(CANCEL_ONLY, 600, alice.markup_bp)
    held = TOPUP - (await h.order(finished)).charge - sum(fresh.values())
    assert await h.balance(alice.id) == held
    await h.reset_stats()

    assert await h.call(alice.key, "cancel", order=first) == [{"order": first, "cancel": 1}]
    assert await calls(h, "cancel") == 1
    assert await h.balance(alice.id) == held  # no money moves until the upstream says so

    reply = await h.call(
        alice.key, "cancel", orders=f"{second},{no_cancel},{finished},{foreign},999999,abc"
    )
    assert reply == [
        {"order": second, "cancel": 1},
        {"order": no_cancel, "cancel": NOT_CANCELABLE},  # the service has no cancel
        {"order": finished, "cancel": NOT_CANCELABLE},  # already final here
        {"order": foreign, "cancel": INCORRECT_ORDER},
        {"order": 999999, "cancel": INCORRECT_ORDER},
        {"order": "abc", "cancel": INCORRECT_ORDER},
    ]
    assert await calls(h, "cancel") == 2  # one call, for the one order that could be

    result = await h.sync()
    assert result.settled == 2
    for order in (first, second):
        view = await h.order(order)
        assert (view.status, view.refunded) == ("Canceled", fresh[order])
        status = await h.status(alice, order)
        assert (status["status"], status["charge"]) == ("Canceled", render(0, 4))
    assert (await h.order(no_cancel)).status in ("Pending", "In progress")
    assert await h.balance(alice.id) == held + fresh[first] + fresh[second]

    before = await h.books()
    assert await h.call(alice.key, "cancel", orders=f"{first},{second}") == [
        {"order": first, "cancel": NOT_CANCELABLE},
        {"order": second, "cancel": NOT_CANCELABLE},
    ]
    assert await calls(h, "cancel") == 2
    for _ in range(3):
        h.clock.advance(h.tick)
        await h.sync()
    assert (await h.order(first)).refunded == fresh[first]
    assert (await h.order(no_cancel)).status == "Completed"  # kept: no entry
    assert await h.books() == before  # no second refund
    assert len(await h.entries(kind="refund", order_id=first)) == 1
    await h.assert_clean()


async def test_refill_and_cancel_of_an_unresolved_order_are_not_eligible(
    harness: Harness,
) -> None:
    h = harness
    alice = await h.customer()
    await h.faults(error5xx=1.0)  # the upstream may have taken it: ours is `unknown`
    order = await h.add(alice, service=BOTH, link="https://ig.test/x", quantity=1000)
    await h.faults()
    assert (await h.order(order)).state == "unknown"
    assert (await h.status(alice, order))["status"] == "Pending"
    await h.reset_stats()
    assert await h.call(alice.key, "cancel", order=order) == [
        {"order": order, "cancel": NOT_CANCELABLE}
    ]
    assert await h.call(alice.key, "refill", order=order) == NOT_REFILLABLE
    assert await h.stats() == {}


@pytest.mark.parametrize("sim_config", ["smartpanel"], indirect=True)
async def test_smartpanel_services_are_refused_without_asking(harness: Harness) -> None:
    h = harness
    alice = await h.customer()
    ids = [
        await h.add(alice, service=s, link=f"https://ig.test/sim:complete/{s}", quantity=500)
        for s in (BOTH, REFILL_ONLY, CANCEL_ONLY)
    ]
    running = await h.add(alice, service=NEITHER, link="https://ig.test/x", quantity=500)
    h.clock.advance(3 * h.tick)
    await h.sync()
    await h.reset_stats()

    for order in [*ids, running]:
        assert await h.call(alice.key, "refill", order=order) == NOT_REFILLABLE
        assert await h.call(alice.key, "cancel", order=order) == [
            {"order": order, "cancel": NOT_CANCELABLE}
        ]
    many = ",".join(map(str, [*ids, running]))
    assert await h.call(alice.key, "refill", orders=many) == [
        {"order": o, "refill": NOT_REFILLABLE} for o in [*ids, running]
    ]
    assert await h.call(alice.key, "cancel", orders=many) == [
        {"order": o, "cancel": NOT_CANCELABLE} for o in [*ids, running]
    ]
    assert await h.call(alice.key, "refill_status", refill=1) == INCORRECT_REFILL
    assert await h.stats() == {}  # SmartPanel was never asked
    await h.assert_clean()
