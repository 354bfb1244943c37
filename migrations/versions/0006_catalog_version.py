"""catalog_version: one row whose number moves with every change of what `services` shows

Revision ID: 0006
Revises: 0004
Create Date: 2026-12-03

Each gateway instance keeps the rendered `services` reply per pricing state and reads this
number with the key lookup of each `services` request (app/panel/services_cache.py): a new
number throws its rendered replies away. Triggers move it in the very transaction of the
change, whichever process or tool writes it: any change to `services` (a catalog sync, hide,
show, rename) or `price_rules` (a price set or cleared), and a customer's markup or dialect.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# An upsert, so that the number moves even if someone emptied the table.
BUMP = (
    "INSERT INTO catalog_version (id, version) VALUES (1, 1)"
    " ON CONFLICT (id) DO UPDATE SET version = catalog_version.version + 1"
)
TABLES = ("services", "price_rules")
# A customer's own prices change only with these two columns (never with the balance, which
# every order moves: that must not bump the number).
CUSTOMER_CHANGED = (
    "OLD.markup_bp IS DISTINCT FROM NEW.markup_bp OR OLD.dialect IS DISTINCT FROM NEW.dialect"
)


def upgrade() -> None:
    op.create_table(
        "catalog_version",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.execute("INSERT INTO catalog_version (id, version) VALUES (1, 1)")
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE FUNCTION bump_catalog_version() RETURNS trigger LANGUAGE plpgsql AS"
            f" $$ BEGIN {BUMP}; RETURN NULL; END $$"
        )
        for table in TABLES:
            op.execute(
                f"CREATE TRIGGER {table}_catalog_version AFTER INSERT OR UPDATE OR DELETE"
                f" ON {table} FOR EACH STATEMENT EXECUTE FUNCTION bump_catalog_version()"
            )
        op.execute(
            "CREATE TRIGGER customers_catalog_version AFTER UPDATE OF markup_bp, dialect"
            f" ON customers FOR EACH ROW WHEN ({CUSTOMER_CHANGED})"
            " EXECUTE FUNCTION bump_catalog_version()"
        )
        return
    for table in TABLES:
        for event in ("INSERT", "UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER {table}_catalog_version_{event.lower()} AFTER {event}"
                f" ON {table} BEGIN {BUMP}; END"
            )
    op.execute(
        "CREATE TRIGGER customers_catalog_version AFTER UPDATE OF markup_bp, dialect"
        f" ON customers WHEN {CUSTOMER_CHANGED.replace('IS DISTINCT FROM', 'IS NOT')}"
        f" BEGIN {BUMP}; END"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in (*TABLES, "customers"):
            op.execute(f"DROP TRIGGER {table}_catalog_version ON {table}")
        op.execute("DROP FUNCTION bump_catalog_version()")
    else:
        for table in TABLES:
            for event in ("insert", "update", "delete"):
                op.execute(f"DROP TRIGGER {table}_catalog_version_{event}")
        op.execute("DROP TRIGGER customers_catalog_version")
    op.drop_table("catalog_version")
