"""Migrations and models agree: a database built by `alembic upgrade head` is exactly what the
models describe, on SQLite and on PostgreSQL, and the migration history has one head."""

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Column, Integer, MetaData, inspect

from app.db import Database, alembic_config
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
