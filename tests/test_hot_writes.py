"""The order phases' driver statements (app/orders/hot_writes.py) write what SQLAlchemy
would: the same column values, timestamps in the same form, so every later read and every
comparison in SQL (recovery's `created_at < cutoff`, the lease) sees them alike."""

import asyncio
import re
from datetime import timedelta

import asyncpg
import pytest
from sqlalchemy import select, text
from sync_helpers import Harness

from app.models import LedgerEntry, Order, as_utc, utcnow

# SQLAlchemy's text for a DateTime on SQLite: always six digits of microseconds, no zone.
SQLALCHEMY_SQLITE_DATETIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}")


async def test_an_orders_timestamps_are_written_as_sqlalchemy_writes_them(
    harness: Harness,
) -> None:
    h = harness
    alice = await h.customer()
    before = utcnow()
    order_id = await h.add(alice, service=5, link="https://ig.test/ts", quantity=1000)
    after = utcnow()
    order = await h.order(order_id)
    assert order.state == "placed" and order.charge > 0
    created = as_utc(order.created_at)
    assert before - timedelta(seconds=1) <= created <= after + timedelta(seconds=1)
    async with h.db.read() as conn:
        # In SQL, against a bound datetime, as recovery compares them.
        found = await conn.scalar(
            select(Order.id).where(
                Order.id == order_id,
                Order.created_at > before - timedelta(seconds=1),
                Order.created_at < after + timedelta(seconds=1),
                Order.updated_at >= Order.created_at,
            )
        )
        assert found == order_id
        entry = await conn.scalar(
            select(LedgerEntry.ref).where(
                LedgerEntry.order_id == order_id,
                LedgerEntry.kind == "charge",
                LedgerEntry.created_at > before - timedelta(seconds=1),
            )
        )
        assert entry == f"charge:{order_id}"
        if h.db.is_sqlite:  # stored as text: the form SQLAlchemy itself stores
            stored = (
                await conn.execute(
                    text(
                        "SELECT o.created_at, o.updated_at, e.created_at FROM orders o"
                        " JOIN ledger_entries e ON e.order_id = o.id WHERE o.id = :id"
                    ),
                    {"id": order_id},
                )
            ).one()
            topup = await conn.scalar(
                text("SELECT created_at FROM ledger_entries WHERE kind = 'topup' LIMIT 1")
            )
            for value in (*stored, topup):
                assert SQLALCHEMY_SQLITE_DATETIME.fullmatch(value), stored
    await h.assert_clean()


async def test_racing_adds_with_one_key_answer_alike_when_the_funds_cover_one(
    harness: Harness,
) -> None:
    """Phase 1 debits before it inserts, so of two requests with one Idempotency-Key the
    loser may find the funds gone before it meets the key: it must answer the winner's
    order id, not `Not enough funds` (found by the seeded simulation, seed 1, `--faults db`)."""
    h = harness
    add = {"service": 5, "link": "https://ig.test/race", "quantity": 1000}
    probe = await h.customer(balance=10**12)
    first = await h.add(probe, **add)
    charge = (await h.order(first)).charge
    for round_ in range(4):
        alice = await h.customer(balance=charge)  # exactly one order's worth
        replies = await asyncio.gather(
            *(h.call(alice.key, "add", idempotency_key=f"k{round_}", **add) for _ in range(2))
        )
        assert replies[0] == replies[1], replies
        assert replies[0].get("status") == "success", replies
        assert await h.balance(alice.id) == 0
    await h.assert_clean()


async def test_phase_one_chosen_to_break_a_lock_cycle_is_run_again(harness: Harness) -> None:
    """PostgreSQL aborts one statement of a lock cycle; when that is phase 1 (which wrote
    nothing and sent nothing) the customer still gets their order, charged once, not a 500.
    The cycle is made here on purpose: another transaction holds the service row that the
    order's foreign key must share-lock, and then wants the customer row phase 1 holds."""
    h = harness
    if h.db.is_sqlite:
        pytest.skip("SQLite takes the whole database's write lock first: no lock cycle")
    alice = await h.customer()
    before = await h.balance(alice.id)
    url = h.db.url.replace("postgresql+asyncpg://", "postgresql://", 1)
    other = await asyncpg.connect(url, timeout=10)
    try:
        # The other side waits longer before it looks for a cycle: phase 1 finds it first.
        await other.execute("SET deadlock_timeout = '10s'")
        tx = other.transaction()
        await tx.start()
        await other.execute("SELECT 1 FROM services WHERE id = 5 FOR UPDATE")
        add = asyncio.create_task(
            h.call(alice.key, "add", service=5, link="https://ig.test/cycle", quantity=1000)
        )
        # Until phase 1 (holding the customer) waits for the service; asked on a connection
        # of its own, since a transaction keeps its first view of pg_stat_activity.
        watcher = await asyncpg.connect(url, timeout=10)
        try:
            for _ in range(500):
                waiting = await watcher.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND datname = current_database()"
                )
                if waiting:
                    break
                await asyncio.sleep(0.01)
        finally:
            await watcher.close()
        assert waiting, "phase 1 never waited for the service row"
        # Waits for phase 1's customer row: a cycle, broken by aborting phase 1.
        await other.execute("UPDATE customers SET balance = balance WHERE id = $1", alice.id)
        await tx.commit()
        reply = await add
    finally:
        await other.close()
    assert "order" in reply, reply
    order = await h.order(reply["order"])
    assert order.state == "placed"
    assert await h.balance(alice.id) == before - order.charge
    await h.assert_clean()
