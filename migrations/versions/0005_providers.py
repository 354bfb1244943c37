"""providers, the offers that deliver each service, and each order's provider

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03

Today's single upstream becomes provider `default` (id 1) with url and key NULL: they keep
coming from SMMGW_UPSTREAM_URL / SMMGW_UPSTREAM_KEY (and its family, double decoding and
timeouts from the settings), so an existing deployment runs on unchanged, and no secret is
written to the database. Every service becomes an offer of `default` whose provider service id
is its own id, so every customer's service ids stay what they were; every order is `default`'s.

orders.provider_id is added without a foreign key: on SQLite a column with REFERENCES cannot be
added in place, and rebuilding a large orders table is not worth it for a link to rows that are
never deleted (providers are disabled, never removed). One upstream order belongs to one order
per provider: the unique index moves to (provider_id, upstream_order_id), made unique when the
data allows, as in 0003 (app.db.ensure_unique_upstream_ids).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from app.db import UPSTREAM_ID_INDEX, ensure_unique_upstream_ids

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "providers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("url", sa.Text(), nullable=True),
        sa.Column("key_encrypted", sa.Text(), nullable=True),
        sa.Column("key_fingerprint", sa.String(length=16), nullable=True),
        sa.Column("family", sa.String(length=20), nullable=True),
        sa.Column("double_decode", sa.Boolean(), nullable=True),
        sa.Column("connect_timeout_seconds", sa.Float(), nullable=True),
        sa.Column("read_timeout_seconds", sa.Float(), nullable=True),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("low_balance_threshold", sa.BigInteger(), nullable=True),
        sa.Column("balance", sa.BigInteger(), nullable=True),
        sa.Column("balance_currency", sa.String(length=8), nullable=True),
        sa.Column("balance_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("out_of_funds_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("family_heard", sa.String(length=20), nullable=True),
        sa.Column("catalog_synced_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("catalog_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    now = "CURRENT_TIMESTAMP"
    op.execute(
        "INSERT INTO providers (id, name, enabled, family_heard, created_at, updated_at)"
        " VALUES (1, 'default', true,"
        " (SELECT value FROM kv WHERE key = 'upstream_family'),"
        f" {now}, {now})"
    )
    if op.get_bind().dialect.name == "postgresql":
        # The row above took id 1 by hand: the next provider must not be given it again.
        op.execute("SELECT setval(pg_get_serial_sequence('providers', 'id'), 1)")

    op.create_table(
        "service_offers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("service_id", sa.Integer(), nullable=False),
        sa.Column("provider_id", sa.Integer(), nullable=False),
        sa.Column("provider_service_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("category", sa.Text(), nullable=False),
        sa.Column("type", sa.String(length=40), nullable=False),
        sa.Column("rate", sa.BigInteger(), nullable=False),
        sa.Column("min", sa.BigInteger(), nullable=False),
        sa.Column("max", sa.BigInteger(), nullable=False),
        sa.Column("dripfeed", sa.Boolean(), nullable=False),
        sa.Column("refill", sa.Boolean(), nullable=False),
        sa.Column("cancel", sa.Boolean(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("listed", sa.Boolean(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["provider_id"], ["providers.id"]),
        sa.ForeignKeyConstraint(["service_id"], ["services.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("provider_id", "provider_service_id"),
        sa.UniqueConstraint("service_id", "provider_id"),
    )
    op.create_index("ix_service_offers_service_id", "service_offers", ["service_id"])
    op.execute(
        "INSERT INTO service_offers (service_id, provider_id, provider_service_id, position,"
        " name, category, type, rate, min, max, dripfeed, refill, cancel, description, listed,"
        " updated_at)"
        " SELECT id, 1, id, 0, name, category, type, rate, min, max, dripfeed, refill, cancel,"
        " description, upstream_listed, updated_at FROM services"
    )

    op.add_column(
        "orders",
        sa.Column("provider_id", sa.Integer(), server_default=sa.text("1"), nullable=False),
    )
    op.create_index("ix_orders_provider_id", "orders", ["provider_id"])
    op.execute(f"DROP INDEX {UPSTREAM_ID_INDEX}")
    ensure_unique_upstream_ids(op.get_bind())


def downgrade() -> None:
    op.execute(f"DROP INDEX {UPSTREAM_ID_INDEX}")
    op.drop_index("ix_orders_provider_id", table_name="orders")
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.drop_column("provider_id")
    op.execute(
        f"CREATE INDEX {UPSTREAM_ID_INDEX} ON orders (upstream_order_id) WHERE state <> 'rejected'"
    )
    op.drop_index("ix_service_offers_service_id", table_name="service_offers")
    op.drop_table("service_offers")
    op.drop_table("providers")
