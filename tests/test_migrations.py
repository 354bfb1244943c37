"""Migrations and models agree: a database built by `alembic upgrade head` is exactly what the
models describe, on SQLite and on PostgreSQL, and the migration history has one head."""

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from conftest import POSTGRES_ADMIN_URL
from sqlalchemy import Column, Integer, MetaData, inspect, text
from sqlalchemy.exc import IntegrityError

from app import ledger
from app.db import Database, alembic_config, ensure_unique_upstream_ids
from app.models import Base


def _head() -> str:
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    assert len(heads) == 1, f"the migration history has several heads: {heads}"
    return heads[0]


def test_the_migration_history_has_exactly_one_head() -> None:
    script = ScriptDirectory.from_config(alembic_config())
    heads = script.get_heads()
    assert len(heads) == 1, heads
    # Every revision is reachable from the head: no orphaned branch.
    walked = {rev.revision for rev in script.walk_revisions("base", heads[0])}
    assert walked == {rev.revision for rev in script.walk_revisions()}


async def _differences(db: Database, metadata: MetaData) -> list:
    def diff(connection) -> list:  # type: ignore[no-untyped-def]
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "target_metadata": metadata}
        )
        return compare_metadata(context, metadata)

    async with db.read() as conn:
        return await conn.run_sync(diff)


async def test_models_match_migrations(db: Database) -> None:
    """After `alembic upgrade head`, autogenerate finds nothing to change."""
    assert await _differences(db, Base.metadata) == []


async def test_the_comparison_sees_a_model_the_migrations_lack(db: Database) -> None:
    """The check above can fail: a column the migrations never created is reported."""
    changed = MetaData()
    for table in Base.metadata.sorted_tables:
        table.to_metadata(changed)
    changed.tables["customers"].append_column(Column("loyalty_points", Integer))
    differences = await _differences(db, changed)
    assert [(d[0], d[2], d[3].name) for d in differences] == [
        ("add_column", "customers", "loyalty_points")
    ]


async def test_database_is_at_the_head_revision(db: Database) -> None:
    def current(connection) -> str | None:  # type: ignore[no-untyped-def]
        return MigrationContext.configure(connection).get_current_revision()

    async with db.read() as conn:
        assert await conn.run_sync(current) == _head()


async def test_every_model_table_exists(db: Database) -> None:
    async with db.read() as conn:
        tables = set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
    assert set(Base.metadata.tables) <= tables


async def test_migrating_again_is_harmless(db: Database) -> None:
    await db.migrate()  # already at head: nothing to do, nothing breaks

    def current(connection) -> str | None:  # type: ignore[no-untyped-def]
        return MigrationContext.configure(connection).get_current_revision()

    async with db.read() as conn:
        assert await conn.run_sync(current) == _head()


@asynccontextmanager
async def _never_migrated(  # type: ignore[no-untyped-def]
    database_url: str, tmp_path
) -> AsyncIterator[Database]:
    """A database of the same kind that was never migrated, dropped afterwards."""
    url = await _fresh_database(database_url, tmp_path)
    db = Database(url)
    try:
        yield db
    finally:
        await db.dispose()
        if not db.is_sqlite:
            admin = await asyncpg.connect(POSTGRES_ADMIN_URL)
            try:
                await admin.execute(f'DROP DATABASE "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
            finally:
                await admin.close()


async def _fresh_database(database_url: str, tmp_path) -> str:  # type: ignore[no-untyped-def]
    """An empty database of the same kind, never migrated."""
    if database_url.startswith("sqlite"):
        return f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"
    name = f"smmgw_old_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(POSTGRES_ADMIN_URL)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return database_url.rsplit("/", 1)[0] + f"/{name}"


_OLD_ROWS = [
    "INSERT INTO customers (id, name, dialect, balance, disabled, created_at)"
    " VALUES (1, 'old', 'standard', 0, false, '2026-11-01 00:00:00')",
    "INSERT INTO services (id, name, category, type, rate, min, max, dripfeed, refill, cancel,"
    " upstream_listed, hidden, updated_at) VALUES (102, 'p', 'c', 'Package', 1, 1, 1,"
    " false, false, false, true, false, '2026-11-01 00:00:00')",
] + [
    "INSERT INTO orders (id, customer_id, service_id, state, status, params, quantity, rate,"
    f" charge, cost, refunded, upstream_order_id, upstream_charge, announced, created_at,"
    f" updated_at) VALUES ({n}, 1, 102, 'placed', 'In progress', '{{}}', 1, 5, 5, 5, 0, 777,"
    f" 4, true, '2026-11-01 00:00:00', '2026-11-01 00:00:00')"
    for n in (1, 2)
]


async def test_old_data_migrates_even_with_a_shared_upstream_id(  # type: ignore[no-untyped-def]
    database_url: str, tmp_path
) -> None:
    """0002 snapshots how existing orders settle from their catalog row, keeps their first
    upstream charge, and does not fail on two orders sharing one upstream id: the index stays
    plain and `ledger verify` names them (issue 10, items 2, 3 and 12)."""
    url = await _fresh_database(database_url, tmp_path)
    db = Database(url)
    try:
        async with db.write() as conn:
            await conn.run_sync(lambda c: command.upgrade(alembic_config(c), "0001"))
            for sql in _OLD_ROWS:
                await conn.execute(text(sql))
        await db.migrate()
        async with db.read() as conn:
            rows = (
                await conn.execute(
                    text(
                        "SELECT service_type, settle_by, upstream_first_charge FROM orders"
                        " ORDER BY id"
                    )
                )
            ).all()
        assert [tuple(r) for r in rows] == [("Package", "charge_ratio", 4)] * 2
        problems = await ledger.verify(db)
        assert "upstream order 777 is attached to 2 orders (1 … 2)" in problems
        async with db.write() as conn:
            await conn.execute(text("UPDATE orders SET upstream_order_id = NULL WHERE id = 2"))
        await db.migrate()  # fixed: the next migrate makes the index unique
        async with db.write() as conn:
            assert await conn.run_sync(ensure_unique_upstream_ids) is True
    finally:
        await db.dispose()
        if not db.is_sqlite:
            admin = await asyncpg.connect(POSTGRES_ADMIN_URL)
            try:
                await admin.execute(f'DROP DATABASE "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
            finally:
                await admin.close()


async def test_a_single_upstream_database_migrates_to_one_provider_default(  # type: ignore[no-untyped-def]
    database_url: str, tmp_path
) -> None:
    """0005 (issue 13): a database made by 0004 with data gets provider `default` (url and key
    NULL: from the settings, as before), every service becomes its own offer of `default`
    (same id), every order is `default`'s, and nothing else changes. One upstream order id is
    then unique per provider."""
    async with _never_migrated(database_url, tmp_path) as db:
        async with db.write() as conn:
            await conn.run_sync(lambda c: command.upgrade(alembic_config(c), "0004"))
            for sql in [*_OLD_ROWS[:2], _ORDER_0004.format(id="1")]:
                await conn.execute(text(sql))  # a customer, a service, an order on upstream 777
            for kind, amount, order in (("topup", 10, "NULL"), ("charge", -5, "1")):
                ref = "NULL" if order == "NULL" else f"'charge:{order}'"
                await conn.execute(
                    text(
                        "INSERT INTO ledger_entries (customer_id, amount, kind, order_id, ref,"
                        f" created_at) VALUES (1, {amount}, '{kind}', {order}, {ref},"
                        " '2026-11-01 00:00:00')"
                    )
                )
            await conn.execute(text("UPDATE customers SET balance = 5"))
            await conn.execute(
                text("INSERT INTO kv (key, value) VALUES ('upstream_family', 'smartpanel')")
            )
        services_before = await _rows(db, "SELECT * FROM services ORDER BY id")
        orders_before = await _rows(db, "SELECT * FROM orders ORDER BY id")
        await db.migrate()
        assert await _rows(
            db, "SELECT id, name, url, key_encrypted, enabled, family, family_heard FROM providers"
        ) == [(1, "default", None, None, True, None, "smartpanel")]
        assert await _rows(
            db,
            "SELECT service_id, provider_id, provider_service_id, position, rate, listed"
            " FROM service_offers",
        ) == [(102, 1, 102, 0, 1, True)]
        assert await _rows(db, "SELECT * FROM services ORDER BY id") == services_before
        after = await _rows(db, "SELECT * FROM orders ORDER BY id")
        assert [row[:-1] for row in after] == orders_before  # provider_id is the new last
        assert [row[-1] for row in after] == [1]
        assert await ledger.verify(db) == []
        # Unique per provider: upstream order 777 may exist at another provider too.
        async with db.write() as conn:
            await conn.execute(
                text(
                    "INSERT INTO providers (id, name, url, enabled, created_at, updated_at)"
                    " VALUES (2, 'b', 'http://b.test', true, '2026-12-01', '2026-12-01')"
                )
            )
            second = _ORDER_0004.format(id="2").replace(" (id,", " (provider_id, id,")
            await conn.execute(text(second.replace("VALUES (2,", "VALUES (2, 2,")))
        with pytest.raises(IntegrityError):  # but not twice at the same provider
            async with db.write() as conn:
                await conn.execute(text("UPDATE orders SET provider_id = 1 WHERE id = 2"))


_ORDER_0004 = (
    "INSERT INTO orders (id, customer_id, service_id, state, status, params, quantity, rate,"
    " charge, cost, refunded, upstream_order_id, upstream_charge, service_type, settle_by,"
    " announced, created_at, updated_at) VALUES ({id}, 1, 102, 'placed', 'In progress', '{{}}',"
    " 1, 5, 5, 5, 0, 777, 4, 'Package', 'charge_ratio', true, '2026-11-01 00:00:00',"
    " '2026-11-01 00:00:00')"
)


async def _rows(db: Database, sql: str) -> list[tuple]:  # type: ignore[type-arg]
    async with db.read() as conn:
        return [tuple(row) for row in (await conn.execute(text(sql))).all()]
