"""Every category of an item (`item_categories`): items became multi-label (a film is Crime
and Drama), `items.category` stays the primary one. Backfilled from `items.category`, the one
category every item had before this revision.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        # The backfill copies every item: at a million items it outlasts the statement
        # timeout that serving statements run under (for this migration's transaction only).
        op.execute("SET LOCAL statement_timeout = 0")
    op.create_table(
        "item_categories",
        sa.Column("item_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("category", sa.String(64), primary_key=True),
    )
    # In the database: a catalogue of millions of items is never read into the migration.
    op.execute(
        "INSERT INTO item_categories (item_id, category) SELECT item_id, category FROM items"
    )
    # After the backfill: one index build instead of an update per copied row.
    op.create_index(
        "ix_item_categories_category_item_id", "item_categories", ["category", "item_id"]
    )


def downgrade() -> None:
    op.drop_index("ix_item_categories_category_item_id", table_name="item_categories")
    op.drop_table("item_categories")
