"""The catalogue's version (`catalogue_version`): one counter bumped in the transaction of every
item write, which serving processes poll to drop item metadata they cached before it. And an
index for the popularity fallback without a category (ORDER BY popularity DESC, item_id): at 1M
items PostgreSQL scanned and sorted the whole table for every cold-start request.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    versions = op.create_table(
        "catalogue_version",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("version", sa.BigInteger, nullable=False),
    )
    op.bulk_insert(versions, [{"name": "items", "version": 0}])
    op.create_index("ix_items_popularity_item_id", "items", [sa.text("popularity DESC"), "item_id"])


def downgrade() -> None:
    op.drop_index("ix_items_popularity_item_id", table_name="items")
    op.drop_table("catalogue_version")
