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
from sqlalchemy import insert, update
from sqlalchemy.dialects.postgresql import dialect as postgresql_dialect
from sqlalchemy.dialects.sqlite import dialect as sqlite_dialect

from app.customers import create_customer, hash_key
from app.db import HOT_READ_SETTINGS, Database
from app.models import Order, Service, utcnow
from app.orders.queries import (
    _KEYED_MANY_PG,
    _KEYED_ONE_PG,
    _KEYED_ONE_SQLITE,
    _STATUS_ONE_PG,
    _STATUS_ONE_SQLITE,
    _keyed_many_sqlite_sql,
    caller_and_orders,
    customer_orders,
    list_orders_statement,
)

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


def _orders_reads(plan: str) -> list[str]:
    """Each node of the plan that reads `orders`, with the condition it is read by."""
    lines = [line.strip().removeprefix("->").strip() for line in plan.splitlines()]
    return [
        f"{line} / {lines[n + 1] if n + 1 < len(lines) else ''}"
        for n, line in enumerate(lines)
        if " on orders" in line or " on ix_orders" in line or " on orders_pkey" in line
    ]


async def test_status_by_key_and_customer_list_take_index_plans_on_stale_statistics(
    never_analysed: Database,
) -> None:
    """`status` (one id and 100 ids) is one statement from the key to the orders; the orders
    are reached by id alone (never all of the customer's, read then filtered), and `orders
    list --customer` through the (customer_id, id) index (never a walk of all orders by id)."""
    db = never_analysed
    customers = await _fill(db)
    keyed, key = await create_customer(db, "keyed", "standard")
    async with db.write() as conn:  # 1,000 orders: those of customers 4 and 5 (ids 5, 6 mod 8)
        await conn.execute(
            update(Order).where(Order.customer_id.in_(customers[4:6])).values(customer_id=keyed)
        )
    mine = [5 + CUSTOMERS * n for n in range(0, 500, 5)]  # 100 of them
    caller, found = await caller_and_orders(db, key, mine)
    assert caller is not None and caller.customer_id == keyed and sorted(found) == mine
    caller, found = await caller_and_orders(db, key, [mine[0] + 2, mine[7]])
    assert sorted(found) == [mine[7]]  # another customer's order is not theirs to see
    assert await caller_and_orders(db, "not-a-key", mine) == (None, {})
    digest = hash_key(key)
    listing = list_orders_statement(customer_id=keyed)
    if db.is_sqlite:

        async def plan_of(sql: str, *args: object) -> str:
            return await sqlite3_plan(db, sql, args)

        many = _keyed_many_sqlite_sql(100)
        for sql, args in ((_KEYED_ONE_SQLITE, (digest, mine[0])), (many, (digest, *mine))):
            plan = await plan_of(sql, *args)
            assert (
                f"{INDEX} (customer_id=? AND rowid=?)" in plan
                or "INTEGER PRIMARY KEY (rowid=?)" in plan
            ), plan
        compiled = listing.compile(dialect=sqlite_dialect(), compile_kwargs={"literal_binds": True})
        plan = await plan_of(str(compiled))
        assert f"{INDEX} (customer_id=?)" in plan and "TEMP B-TREE" not in plan, plan
        return
    url = db.url.replace("postgresql+asyncpg://", "postgresql://", 1)
    conn = await asyncpg.connect(url, timeout=10)
    try:
        for name, value in HOT_READ_SETTINGS.items():  # as the hot reads' connections have it
            await conn.execute(f"SET {name} = {value}")
        await conn.execute(f"PREPARE keyed_one(text, bigint) AS {_KEYED_ONE_PG}")
        await conn.execute(f"PREPARE keyed_many(text, bigint[]) AS {_KEYED_MANY_PG}")
        ids = "ARRAY[" + ",".join(map(str, mine)) + "]::bigint[]"
        compiled = listing.compile(
            dialect=postgresql_dialect(), compile_kwargs={"literal_binds": True}
        )
        for mode in ("force_generic_plan", "force_custom_plan"):
            await conn.execute(f"SET plan_cache_mode = {mode}")
            for call in (f"keyed_one('{digest}', {mine[0]})", f"keyed_many('{digest}', {ids})"):
                rows = await conn.fetch(f"EXPLAIN EXECUTE {call}")
                plan = "\n".join(row[0] for row in rows)
                reads = _orders_reads(plan)
                assert reads, plan
                for read in reads:  # by id: the primary key (an index scan or its bitmap)
                    assert "Cond: (id = " in read, (mode, plan)
                    assert "orders_pkey" in read or "Bitmap Heap Scan" in read, (mode, plan)
                assert "Seq Scan on orders" not in plan, (mode, plan)
        plan = "\n".join(r[0] for r in await conn.fetch(f"EXPLAIN {compiled}"))
        # Through the customer's index entries (walked backwards, or gathered and sorted
        # when the planner believes the customer has few orders), never a walk of every
        # order by id filtered by customer (for a small customer: the whole table).
        reads = _orders_reads(plan)
        assert any(f"using {INDEX}" in r or f"on {INDEX}" in r for r in reads), plan
        assert all("customer_id = " in r or "Heap Scan" in r for r in reads), plan
        assert "orders_pkey" not in plan and "Seq Scan" not in plan, plan
    finally:
        await conn.close()


async def sqlite3_plan(db: Database, sql: str, args: tuple[object, ...]) -> str:
    explain = "EXPLAIN QUERY PLAN " + sql
    return " / ".join(str(row[-1]) for row in await db.fetch(explain, explain, *args))
