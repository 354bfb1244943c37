"""The hot reads take the intended plan even on statistics nobody gathered.

This machine's PostgreSQL runs with autovacuum off, as some production ones do: a table that
was never analysed is planned from guesses (here: "a customer has 2 orders"). On such a
database, with a few thousand orders over several customers, the old `status` for one id
(`customer_id = $1 AND id = ANY($2)`) was planned, once asyncpg's prepared statement went
generic, as "read all of this customer's orders through ix_orders_customer_id, then filter by
id". Now one id is asked as `id = $2` and orders are indexed on (customer_id, id) (migration
0004): every plan is one descent of a unique key — the (customer_id, id) index with both
conditions, or the primary key. Checked for the generic plan and the per-call one; on SQLite,
for its planner's guesses.
"""

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from conftest import POSTGRES_ADMIN_URL
from helpers import new_customer
from sqlalchemy import insert

from app.db import Database
from app.models import Order, Service, utcnow
from app.orders.queries import _STATUS_ONE_PG, _STATUS_ONE_SQLITE, customer_orders

CUSTOMERS = 8
ORDERS = 4000
INDEX = "ix_orders_customer_id_id"


@pytest.fixture
async def never_analysed(database_url: str) -> AsyncIterator[Database]:
    """A freshly migrated database of either kind whose tables were never analysed."""
    if database_url.startswith("sqlite"):  # a fresh copy of the migrated template
        db = Database(database_url)
        yield db
        await db.dispose()
        return
    name = f"smmgw_plans_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(POSTGRES_ADMIN_URL, timeout=10)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        url = f"{database_url.rsplit('/', 1)[0]}/{name}"
        db = Database(url)
        try:
            await db.migrate()
            yield db
        finally:
            await db.dispose()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def _fill(db: Database) -> list[int]:
    customers = [(await new_customer(db, f"c{i}")).id for i in range(CUSTOMERS)]
    now = utcnow()
    async with db.write() as conn:
        await conn.execute(
            insert(Service).values(
                id=1,
                name="s",
                category="c",
                type="Default",
                rate=1000,
                min=10,
                max=10_000,
                updated_at=now,
            )
        )
        await conn.execute(
            insert(Order),
            [
                {
                    "customer_id": customers[n % CUSTOMERS],
                    "service_id": 1,
                    "state": "placed",
                    "status": "In progress",
                    "params": "{}",
                    "quantity": 100,
                    "rate": 1000,
                    "charge": 100,
                    "cost": 90,
                    "refunded": 0,
                    "service_type": "Default",
                    "settle_by": "remains",
                    "announced": True,
                    "created_at": now,
                    "updated_at": now,
                }
                for n in range(ORDERS)
            ],
        )
    return customers


async def test_one_id_status_uses_the_customer_id_index_on_stale_statistics(
    never_analysed: Database,
) -> None:
    db = never_analysed
    customers = await _fill(db)
    customer, order_id = customers[3], 4 + CUSTOMERS * 250  # one of that customer's orders
    assert list(await customer_orders(db, customer, [order_id])) == [order_id]
    assert await customer_orders(db, customers[2], [order_id]) == {}  # not theirs
    if db.is_sqlite:
        sql = "EXPLAIN QUERY PLAN " + _STATUS_ONE_SQLITE
        plan = " / ".join(str(row[-1]) for row in await db.fetch(sql, sql, customer, order_id))
        # the row by its id, or the (customer_id, id) pair: either reads one entry
        assert (
            "INTEGER PRIMARY KEY (rowid=?)" in plan
            or f"{INDEX} (customer_id=? AND rowid=?)" in plan
        ), plan
        return
    url = db.url.replace("postgresql+asyncpg://", "postgresql://", 1)
    conn = await asyncpg.connect(url, timeout=10)
    try:
        analysed = await conn.fetchval(
            "SELECT last_analyze IS NOT NULL OR last_autoanalyze IS NOT NULL"
            " FROM pg_stat_user_tables WHERE relname = 'orders'"
        )
        assert analysed is False, "the point is statistics nobody gathered"
        await conn.execute(f"PREPARE status_one(int, bigint) AS {_STATUS_ONE_PG}")
        for mode in ("force_generic_plan", "force_custom_plan"):
            await conn.execute(f"SET plan_cache_mode = {mode}")
            rows = await conn.fetch(f"EXPLAIN EXECUTE status_one({customer}, {order_id})")
            plan = "\n".join(row[0] for row in rows)
            first, cond = plan.splitlines()[:2]
            assert first.startswith(
                (f"Index Scan using {INDEX} on orders", "Index Scan using orders_pkey on orders")
            ), (mode, plan)
            assert (
                "id = $2" in cond or f"id = '{order_id}'" in cond or f"id = {order_id}" in cond
            ), (
                mode,
                plan,
            )
            assert "Bitmap" not in plan and "Sort" not in plan, (mode, plan)
    finally:
        await conn.close()
