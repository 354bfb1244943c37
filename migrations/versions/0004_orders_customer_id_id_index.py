"""orders: one index on (customer_id, id) instead of the one on customer_id alone

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03

A customer's `status` asks for ids among their own orders. With the index on customer_id alone,
a PostgreSQL whose statistics are stale (autovacuum off, never analysed) may plan it as "read
all of this customer's orders, then filter by id" — 0.1 ms becomes milliseconds for a customer
with many orders. On (customer_id, id) both conditions are the index's, so that plan is the
cheapest whatever the statistics say; the index also serves everything the old one did (its
first column), so the old one goes.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_orders_customer_id_id", "orders", ["customer_id", "id"])
    op.drop_index("ix_orders_customer_id", table_name="orders")


def downgrade() -> None:
    op.create_index("ix_orders_customer_id", "orders", ["customer_id"])
    op.drop_index("ix_orders_customer_id_id", table_name="orders")
