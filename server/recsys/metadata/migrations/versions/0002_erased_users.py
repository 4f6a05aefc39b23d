"""Tombstones of erased users (`erased_users`), backfilled from the deleted profile markers.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-07
"""

import hashlib

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _subject(user_id: str) -> str:
    # recsys.domain.erasure.hashed_subject as of this revision (a migration never changes).
    return "sha256:" + hashlib.sha256(user_id.encode()).hexdigest()[:32]


def upgrade() -> None:
    erased_users = op.create_table(
        "erased_users",
        sa.Column("subject", sa.String(128), primary_key=True),
        sa.Column(
            "erased_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
    )
    # Users erased before this revision are the profiles kept as deleted markers.
    users = sa.table(
        "users",
        sa.column("user_id", sa.String(128)),
        sa.column("deleted_at", sa.DateTime(timezone=True)),
    )
    rows = op.get_bind().execute(
        sa.select(users.c.user_id, users.c.deleted_at).where(users.c.deleted_at.is_not(None))
    )
    tombstones = [{"subject": _subject(row.user_id), "erased_at": row.deleted_at} for row in rows]
    if tombstones:
        op.bulk_insert(erased_users, tombstones)


def downgrade() -> None:
    op.drop_table("erased_users")
