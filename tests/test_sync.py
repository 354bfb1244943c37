"""The status sync when the upstream misbehaves: failed batches, orders it denies, statuses it
words its own way; orders a crash left in `sending`; batches, order of polling, leases.
"""

from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy import event, select
from sync_helpers import (
    TOPUP,
    Harness,
    UpstreamTap,
    expected_charge,
    partial_refund,
    settings_for,
    sim_remains,
)

from app.catalog import priced_service
from app.models import Order, as_utc
from app.money import render
from app.orders.placing import commit_intent
from app.orders.queries import resolve
from app.orders.validation import validate_add
from app.settings import Settings
from app.simulator import SimConfig
from app.upstream import UpstreamClient

FATES = ("sim:complete", "sim:partial", "sim:cancel")


@pytest.fixture
def settings(database_url: str, sim_config: SimConfig) -> Settings:
    return settings_for(database_url, sim_config)


async def tapped(
    h: Harness, statuses: dict[int, str] | None = None
) -> tuple[UpstreamClient, UpstreamTap]:
    tap = UpstreamTap(h.simulator, statuses)
    client = UpstreamClient.from_settings(h.gw.settings, transport=httpx.ASGITransport(app=tap))
    return client, tap


@pytest.fixture
async def tap_client(harness: Harness) -> AsyncIterator[tuple[UpstreamClient, UpstreamTap]]:
    client, tap = await tapped(harness)
    try:
        yield client, tap
    finally:
        await client.aclose()


async def three_fates(h: Harness, quantity: int = 1000):  # type: ignore[no-untyped-def]
    who = await h.customer()
    ids = [
        await h.add(who, service=5, link=f"https://ig.test/{fate}", quantity=quantity)
        for fate in FATES
    ]
    return who, ids


async def test_a_failed_batch_changes_nothing_and_is_retried_next_pass(harness: Harness) -> None:
    h = harness
    who, ids = await three_fates(h)
    h.clock.advance(3 * h.tick)  # every order is final upstream
    before = await h.books()
    orders_before = [await h.order(i) for i in ids]

    # A 502 page, a gzip-garbled body, a Cloudflare challenge, a reset mid-reply, and a
    # refusal of the whole call (the upstream's "bad key" answer).
    kinds = ["error5xx", "garbage", "html", "drop", "reject"]
    await h.reset_stats()
    for kind in kinds:
        await h.faults(**{kind: 1.0})
        result = await h.sync(batch_size=2)
        # The pass stops at the first failed batch: a failing upstream is not hammered.
        assert (result.failed_batches, result.upstream_calls) == (1, 1), kind
        assert (result.polled, result.settled, result.anomalies) == (0, 0, []), kind
        assert await h.books() == before, kind
        # Not even refreshed_at moved, and every lease was handed back.
        assert [await h.order(i) for i in ids] == orders_before, kind
    assert (await h.stats())["status"] == len(kinds)

    await h.faults()
    result = await h.sync(batch_size=2)
    assert (result.failed_batches, result.polled, result.settled) == (0, 3, 3)
    assert result.upstream_calls == 2
    charge = expected_charge(5, 1000, who.markup_bp)
    partial = await h.order(ids[1])
    heard = await h.sim_status(partial.upstream_order_id)
    refund = partial_refund(charge, sim_remains(heard["remains"]), 1000)
    assert partial.refunded == refund
    assert await h.balance(who.id) == TOPUP - 3 * charge + refund + charge
    await h.assert_clean()


@pytest.mark.parametrize("sim_config", ["smartpanel", "standard"], indirect=True)
async def test_incorrect_order_id_for_an_order_we_placed_is_an_anomaly_not_a_refund(
    harness: Harness,
) -> None:
    h = harness
    who = await h.customer()
    # The upstream fails after it may have taken the order: ours is `unknown`, funds held.
    await h.faults(error5xx=1.0)
    lost = await h.add(who, service=5, link="https://ig.test/sim:complete", quantity=1000)
    await h.faults()
    assert (await h.order(lost)).state == "unknown"
    fine = await h.add(who, service=5, link="https://ig.test/sim:cancel", quantity=1000)
    charge = expected_charge(5, 1000, who.markup_bp)

    # An operator resolves it to an upstream id the upstream has never heard of.
    known = set(await h.sim_orders())
    missing = max(known) + 1000
    await resolve(h.db, lost, upstream_order_id=missing)
    h.clock.advance(3 * h.tick)
    entries = await h.entry_count()

    result = await h.sync()
    assert (result.polled, result.settled) == (2, 1)
    [anomaly] = result.anomalies
    assert f"order {lost}" in anomaly and str(missing) in anomaly
    order = await h.order(lost)
    assert (order.state, order.status, order.refunded) == ("placed", "Pending", 0)
    assert order.error == "upstream: Incorrect order ID"
    assert await h.entries(order_id=lost) == [("charge", -charge, lost, f"charge:{lost}")]
    # Only the canceled order's refund was written; the denied one keeps its funds held.
    assert await h.entry_count() == entries + 1
    assert await h.balance(who.id) == TOPUP - charge

    before = await h.books()
    again = await h.sync()
    assert (again.polled, again.settled, len(again.anomalies)) == (1, 0, 1)
    assert await h.books() == before
    reply = await h.status(who, lost)
    assert (reply["status"], reply["charge"]) == ("Pending", render(charge, 4))
    assert (await h.status(who, fine))["charge"] == render(0, 4)
    await h.assert_clean()


async def test_orders_left_in_sending_become_unknown_after_the_grace(harness: Harness) -> None:
    h = harness
    who = await h.customer()
    service = await priced_service(h.db, 5, who.id, who.markup_bp, 0)
    request = validate_add(
        {"link": "https://ig.test/x", "quantity": "1000"}, service, h.gw.upstream.rules
    )
    # Phase 1 of placing committed, then the process died before the upstream call.
    crashed = await commit_intent(h.db, who.id, request, None)
    assert (await h.order(crashed)).state == "sending"
    held = TOPUP - request.charge
    assert await h.balance(who.id) == held

    await h.reset_stats()
    young = await h.sync(sending_grace_seconds=3600)
    assert (await h.order(crashed)).state == "sending"
    assert (young.polled, young.upstream_calls) == (0, 0)  # nothing to ask: no call at all

    old = await h.sync(sending_grace_seconds=0)
    order = await h.order(crashed)
    assert order.state == "unknown" and order.error
    assert (old.polled, old.upstream_calls, old.settled) == (0, 0, 0)
    assert (await h.stats()).get("status", 0) == 0
    # The upstream may have it: funds stay held, nothing is refunded.
    assert await h.balance(who.id) == held
    assert [e[0] for e in await h.entries(order_id=crashed)] == ["charge"]
    reply = await h.status(who, crashed)
    assert (reply["status"], reply["charge"]) == ("Pending", render(request.charge, 4))
    await h.assert_clean()


async def test_unknown_and_variant_upstream_statuses(harness: Harness) -> None:
    """A panel with its own words: a status we do not know is shown as `In progress` and
    settles nothing; `Refunded` is `Canceled`; any case is read."""
    h = harness
    who, (odd, partial, refunded) = await three_fates(h)  # complete, partial, cancel
    charge = expected_charge(5, 1000, who.markup_bp)
    upstream = {oid: (await h.order(oid)).upstream_order_id for oid in (odd, partial, refunded)}
    client, _tap = await tapped(
        h,
        {
            upstream[odd]: "Awaiting moderation",
            upstream[partial]: "PARTIAL",
            upstream[refunded]: "Refunded",
        },
    )
    try:
        h.clock.advance(3 * h.tick)
        result = await h.sync(upstream=client)
        assert (result.polled, result.settled) == (3, 2)
        order = await h.order(odd)
        assert (order.status, order.upstream_status, order.refunded) == (
            "In progress",
            "Awaiting moderation",
            0,
        )
        assert (await h.status(who, odd))["status"] == "In progress"
        remains = sim_remains((await h.sim_status(upstream[partial]))["remains"])
        assert ((await h.order(partial)).status, (await h.order(partial)).refunded) == (
            "Partial",
            partial_refund(charge, remains, 1000),
        )
        assert (await h.status(who, partial))["status"] == "Partial"
        assert ((await h.order(refunded)).status, (await h.order(refunded)).refunded) == (
            "Canceled",
            charge,
        )
        assert (await h.status(who, refunded))["status"] == "Canceled"
        before = await h.books()
        for _ in range(2):
            again = await h.sync(upstream=client)
            assert (again.polled, again.settled) == (1, 0)  # only the odd one stays active
        assert await h.books() == before
    finally:
        await client.aclose()
    # Once the panel says a word we know (Completed), it settles.
    assert (await h.sync()).settled == 1
    assert ((await h.order(odd)).status, (await h.order(odd)).refunded) == ("Completed", 0)
    assert await h.balance(who.id) == (
        TOPUP - 3 * charge + partial_refund(charge, remains, 1000) + charge
    )
    await h.assert_clean()


async def test_batches_cover_every_active_order_once_oldest_refreshed_first(
    harness: Harness, tap_client: tuple[UpstreamClient, UpstreamTap]
) -> None:
    h = harness
    client, tap = tap_client
    who = await h.customer()
    first = await h.place_many(
        who, [{"service": "9", "link": f"https://ig.test/{i}", "quantity": "500"} for i in range(5)]
    )
    up = {oid: (await h.order(oid)).upstream_order_id for oid in first}

    result = await h.sync(upstream=client, batch_size=2)
    assert (result.polled, result.upstream_calls) == (5, 3)
    # Batches of at most 2, every order once, oldest first (all never refreshed: by id).
    assert [set(c) for c in tap.status_calls] == [
        {up[first[0]], up[first[1]]},
        {up[first[2]], up[first[3]]},
        {up[first[4]]},
    ]
    refreshed = {o: (await h.order(o)).refreshed_at for o in first}
    assert all(refreshed.values())

    [late] = await h.place_many(
        who, [{"service": "9", "link": "https://ig.test/z", "quantity": "500"}]
    )
    tap.status_calls.clear()
    result = await h.sync(upstream=client, batch_size=2)
    assert (result.polled, result.upstream_calls) == (6, 3)
    never_refreshed = (await h.order(late)).upstream_order_id
    oldest = sorted(first, key=lambda o: (as_utc(refreshed[o]), o))
    assert [set(c) for c in tap.status_calls] == [
        {never_refreshed, up[oldest[0]]},
        {up[oldest[1]], up[oldest[2]]},
        {up[oldest[3]], up[oldest[4]]},
    ]
    # Every lease was handed back: another worker may take any of them at once.
    async with h.db.read() as conn:
        leases = (await conn.execute(select(Order.lease_until))).scalars().all()
    assert leases == [None] * 6
    await h.assert_clean()


async def test_a_pass_commits_once_per_batch_of_refreshes_and_once_per_settlement(
    harness: Harness, tap_client: tuple[UpstreamClient, UpstreamTap]
) -> None:
    """The orders a pass only refreshes are written together, one transaction per batch; each
    order it settles in a transaction of its own. One commit per polled order made a pass over
    100,000 active orders take ~8 minutes on PostgreSQL (bench/README.md "Scale")."""
    h = harness
    client, tap = tap_client
    engine = h.db._sqlite_write if h.db.is_sqlite else h.db._pg.sync_engine  # type: ignore[union-attr]
    commits = 0

    def count(_conn: object) -> None:
        nonlocal commits
        commits += 1

    event.listen(engine, "commit", count)
    try:
        await h.sync(upstream=client)  # nothing to poll: what any pass commits
        idle, commits = commits, 0

        who, fates = await three_fates(h)
        h.clock.advance(3 * h.tick)  # these three are final upstream
        live = await h.place_many(
            who,
            [{"service": "9", "link": f"https://ig.test/{i}", "quantity": "500"} for i in range(9)],
        )
        up = {oid: (await h.order(oid)).upstream_order_id for oid in fates + live}
        tap.statuses[up[live[0]]] = "Awaiting moderation"  # a word we do not know
        balance_before = await h.balance(who.id)
        commits = 0
        result = await h.sync(upstream=client, batch_size=4)
        pass_commits = commits
    finally:
        event.remove(engine, "commit", count)

    assert (result.polled, result.upstream_calls, result.settled) == (12, 3, 3)
    # Per batch a claim and one write of its refreshes; one per settlement.
    assert pass_commits - idle <= 2 * result.upstream_calls + result.settled
    heard = await h.sim_statuses([up[o] for o in live])
    for oid in live:
        order, said = await h.order(oid), heard[up[oid]]
        shown = "In progress" if oid == live[0] else said["status"]
        assert (order.status, order.refunded, order.settled_at) == (shown, 0, None), order
        assert order.remains == sim_remains(said["remains"]) and order.refreshed_at, order
    assert (await h.order(live[0])).upstream_status == "Awaiting moderation"
    charge = expected_charge(5, 1000, who.markup_bp)
    remains = sim_remains((await h.sim_status(up[fates[1]]))["remains"])
    refund = partial_refund(charge, remains, 1000)
    assert [(await h.order(o)).refunded for o in fates] == [0, refund, charge]
    assert all([(await h.order(o)).settled_at for o in fates])
    assert await h.balance(who.id) == balance_before + refund + charge
    async with h.db.read() as conn:
        leases = (await conn.execute(select(Order.lease_owner, Order.lease_until))).all()
    assert set(leases) == {(None, None)}  # every lease handed back
    await h.assert_clean()
