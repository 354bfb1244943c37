"""orders.upstream_order_id unique among orders not rejected

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03

0002 made the id unique over every order; an operator's correction to "not placed" keeps the
(wrong) upstream id on the rejected order for the audit, so the rule is: one upstream order
belongs to one order that is not rejected. As in 0002, old data with shared ids keeps a plain
index and `ledger verify` lists them (app.db.ensure_unique_upstream_ids).
"""

from collections.abc import Sequence

from alembic import op

from app.db import UPSTREAM_ID_INDEX, ensure_unique_upstream_ids

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(f"DROP INDEX {UPSTREAM_ID_INDEX}")
    ensure_unique_upstream_ids(op.get_bind())


def downgrade() -> None:
    op.execute(f"DROP INDEX {UPSTREAM_ID_INDEX}")
    op.execute(f"CREATE INDEX {UPSTREAM_ID_INDEX} ON orders (upstream_order_id)")
