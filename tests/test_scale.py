"""bench/scale.py's fill at a tiny size, and the sync pass's claim on the plan it must keep.

The fill writes the tables directly (COPY / executemany), so nothing of the app checked its
rows on the way in: `ledger verify` must find them consistent, and a filled key must open its
customer's balance. The claim of a sync pass must read the orders it polls through the partial
index ix_orders_due on statistics nobody gathered: through the (state, refreshed_at) index it
read and sorted every placed order per batch, settled ones included (0.36 s per batch of 100 at
a million orders on PostgreSQL, bench/README.md "Scale").
"""

import random
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import asyncpg
from fastapi import FastAPI
from sqlalchemy import event, func, select
from test_query_plans import never_analysed  # noqa: F401 (a fixture)

from app import ledger
from app.customers import authenticate
from app.db import Database
from app.gauges import read_state
from app.models import DUE_WHERE, Customer, Order
from app.orders.placing import PLACED
from app.sync import sync_pass
from app.upstream import UpstreamClient

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from scale_fill import fill, orderable_services, quantity_for

FINAL = ("Completed", "Partial", "Canceled", "Expired")


async def test_the_fill_keeps_the_ledger_invariants_and_its_keys_work(db: Database) -> None:
    filled = await fill(db.url, 2_000, customers=150, seed=3)
    assert await ledger.verify(db) == []
    async with db.read() as conn:
        active = await conn.scalar(
            select(func.count()).where(
                Order.state == "placed", Order.settled_at.is_(None), Order.status.not_in(FINAL)
            )
        )
        settled = await conn.scalar(select(func.count()).where(Order.settled_at.is_not(None)))
        heavy_balance = await conn.scalar(
            select(Customer.balance).where(Customer.id == filled.heavy_customer)
        )
    assert (filled.active, active) == (200, 200)
    assert settled > 1_700  # the rest, but for a few unknown (funds held) orders
    caller = await authenticate(db, filled.keys[filled.heavy_customer])
    assert caller is not None
    assert (caller.customer_id, caller.balance) == (filled.heavy_customer, heavy_balance)


@contextmanager
def _statements(engine: Any, wanted: Callable[[str], bool]) -> Iterator[list[tuple[str, Any]]]:
    """The statements (and their parameters) `engine` runs inside the block that `wanted`
    selects."""
    seen: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if wanted(statement):
            seen.append((statement, params))

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


async def _plans(db: Database, engine: Any, statement: str, params: Any) -> dict[str, str]:
    """The plans of `statement`: SQLite's; PostgreSQL's generic and per-call ones."""
    if db.is_sqlite:
        with engine.connect() as conn:
            rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", params).all()
        return {"sqlite": " / ".join(str(row[-1]) for row in rows)}
    conn = await asyncpg.connect(db.url.replace("+asyncpg", "", 1), timeout=10)
    try:
        found = {}
        for mode in ("force_generic_plan", "force_custom_plan"):
            await conn.execute(f"SET plan_cache_mode = {mode}")
            rows = await conn.fetch(f"EXPLAIN {statement}", *params)
            found[mode] = "\n".join(row[0] for row in rows)
        return found
    finally:
        await conn.close()


async def test_a_sync_pass_claims_through_the_due_index_on_stale_statistics(
    never_analysed: Database,  # noqa: F811
    simulator: FastAPI,
    upstream: UpstreamClient,
) -> None:
    db = never_analysed
    sim = simulator.state.sim
    sim.balance = 10**15  # 300 orders of up to 20 × a service's minimum
    services = orderable_services()
    ids = []
    for n in range(300):  # the active orders exist upstream: placed through its own add
        service = services[n % len(services)]
        quantity = quantity_for(service, random.Random(n))
        params = {
            "service": str(service.id),
            "link": f"https://t.me/s{n}",
            "quantity": str(quantity),
        }
        ids.append(sim.add(params, "smartpanel").id)
    await fill(db.url, 3_000, customers=100, seed=5, upstream_ids=ids)
    calls = sim.calls["status"]

    engine = db._sqlite_write if db.is_sqlite else db._pg.sync_engine  # type: ignore[union-attr]
    with _statements(engine, lambda sql: "ORDER BY" in sql and "LIMIT" in sql) as seen:
        result = await sync_pass(db, upstream, sending_grace_seconds=60)
    assert (result.polled, result.upstream_calls, sim.calls["status"] - calls) == (300, 3, 3)
    assert await ledger.verify(db) == []
    assert len(seen) >= 3, seen  # each batch's claim

    for statement, params in seen:
        for mode, plan in (await _plans(db, engine, statement, params)).items():
            assert "USING INDEX ix_orders_due" in plan or (
                "Index Scan using ix_orders_due on orders" in plan
            ), (mode, plan)
            # Read in the index's order: no sort, no other scan.
            assert not any(word in plan for word in ("TEMP B-TREE", "Sort", "Seq")), (mode, plan)


def test_the_index_condition_names_the_placed_state() -> None:
    """DUE_WHERE is written out in SQL for the planners; it must say what PLACED says."""
    assert f"state = '{PLACED}'" in DUE_WHERE


async def test_the_active_order_gauges_read_through_the_due_index_on_stale_statistics(
    never_analysed: Database,  # noqa: F811
) -> None:
    db = never_analysed
    filled = await fill(db.url, 3_000, customers=100, seed=6)
    engine = db._sqlite_read if db.is_sqlite else db._pg.sync_engine  # type: ignore[union-attr]
    with _statements(engine, lambda sql: DUE_WHERE in sql) as seen:
        state = await read_state(db)
    assert (state.up, state.active, state.held) == (True, filled.active, 0)
    assert len(seen) == 2, seen  # the active orders' count and age; the held settlements
    for statement, params in seen:
        for mode, plan in (await _plans(db, engine, statement, params)).items():
            assert "ix_orders_due" in plan and "Seq Scan" not in plan, (mode, plan)
