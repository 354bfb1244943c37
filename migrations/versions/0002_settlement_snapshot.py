"""settlement snapshot, first upstream charge, lease owner, held settlements, unique upstream ids

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03

Existing orders get their settlement snapshot from the catalog row they point at (every order
has one: a foreign key); their first upstream charge from the last one reported while still
live (for a settled order it is unknown: NULL, and the charge ratio falls back to our cost).

The unique index on orders.upstream_order_id is created only when the data allows it: a
database where two orders share an upstream id keeps a plain index, the migration says so,
and `ledger verify` lists those orders until they are fixed and `smm-gateway migrate` runs
again (app.db.ensure_unique_upstream_ids).
"""

import logging
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("alembic.runtime.migration")

FINAL = ("Completed", "Partial", "Canceled", "Expired")
RATIO_TYPES = ("Package", "Custom Comments Package", "Subscriptions")


def upgrade() -> None:
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.add_column(sa.Column("upstream_first_charge", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("service_type", sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column("settle_by", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("lease_owner", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("held", sa.String(length=200), nullable=True))

    final = ", ".join(f"'{s}'" for s in FINAL)
    ratio = ", ".join(f"'{t}'" for t in RATIO_TYPES)
    op.execute(
        "UPDATE orders SET service_type = COALESCE("
        "(SELECT services.type FROM services WHERE services.id = orders.service_id), 'Default')"
    )
    op.execute(
        f"UPDATE orders SET settle_by = CASE WHEN service_type IN ({ratio})"
        " THEN 'charge_ratio' ELSE 'remains' END"
    )
    op.execute(
        "UPDATE orders SET upstream_first_charge = upstream_charge"
        f" WHERE settled_at IS NULL AND status NOT IN ({final})"
    )
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.alter_column("service_type", existing_type=sa.String(length=40), nullable=False)
        batch_op.alter_column("settle_by", existing_type=sa.String(length=16), nullable=False)
        batch_op.drop_index("ix_orders_upstream_order_id")

    shared = op.get_bind().scalar(
        sa.text(
            "SELECT COUNT(*) FROM (SELECT upstream_order_id FROM orders"
            " WHERE upstream_order_id IS NOT NULL GROUP BY upstream_order_id"
            " HAVING COUNT(*) > 1) AS shared"
        )
    )
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.create_index(
            "uq_orders_upstream_order_id", ["upstream_order_id"], unique=not shared
        )
    if shared:
        log.warning(
            "%d upstream order ids are attached to more than one order: orders.upstream_order_id"
            " is not unique yet; `smm-gateway ledger verify` lists them",
            shared,
        )


def downgrade() -> None:
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.drop_index("uq_orders_upstream_order_id")
        batch_op.create_index("ix_orders_upstream_order_id", ["upstream_order_id"], unique=False)
        batch_op.drop_column("held")
        batch_op.drop_column("lease_owner")
        batch_op.drop_column("settle_by")
        batch_op.drop_column("service_type")
        batch_op.drop_column("upstream_first_charge")
