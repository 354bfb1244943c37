"""orders: a partial index of the orders a sync pass polls (placed, not settled); (state,
created_at) instead of (state, refreshed_at)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03

A sync pass claims its batches of 100 among the placed orders not settled yet, oldest refresh
first. The only index it had, (state, refreshed_at), holds every placed order, settled ones
included: at a million orders (100,000 active) each claim read and sorted ~1 million index
entries, 0.36 s on PostgreSQL, so one pass took about 1,000 × that (bench/scale.py). This index
holds only the unsettled placed orders, per provider in the claim's order: a claim (one
provider's batch) reads its 100 entries.
The active-order gauges of /metrics count through it too.

(state, refreshed_at) goes: SQLite, with no statistics, rated it above the new index for the
claim (two equalities against one, and the rowid after refreshed_at gives the claim's order
too), and nothing else needs it; for the same reason the new index starts with `state`, though
it is constant there: with it, the index serves every condition of the claim it can.
(state, created_at) takes the old index's other uses: the `sending` orders past their grace
(every pass), the oldest `unknown` order (a gauge), counts by state.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

WHERE = "settled_at IS NULL AND state = 'placed'"


def upgrade() -> None:
    op.create_index(
        "ix_orders_due",
        "orders",
        ["state", "provider_id", "refreshed_at", "id"],
        sqlite_where=sa.text(WHERE),
        postgresql_where=sa.text(WHERE),
    )
    op.create_index("ix_orders_state_created", "orders", ["state", "created_at"])
    op.drop_index("ix_orders_state_refreshed", table_name="orders")


def downgrade() -> None:
    op.create_index("ix_orders_state_refreshed", "orders", ["state", "refreshed_at"])
    op.drop_index("ix_orders_state_created", table_name="orders")
    op.drop_index("ix_orders_due", table_name="orders")
