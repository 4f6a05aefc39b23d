"""Table definitions (SQLAlchemy Core). Schema changes go through an Alembic revision."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    func,
)

metadata = MetaData()

users = Table(
    "users",
    metadata,
    Column("user_id", String(128), primary_key=True),
    Column("age", Integer, nullable=True),
    Column("country", String(2), nullable=True),
    Column("blocked_categories", JSON, nullable=False, default=list),
    Column("onboarding_categories", JSON, nullable=False, default=list),
    Column("liked_item_ids", JSON, nullable=False, default=list),
    # Set by erasure: the profile is kept only as this marker.
    Column("deleted_at", DateTime(timezone=True), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

items = Table(
    "items",
    metadata,
    Column("item_id", BigInteger, primary_key=True, autoincrement=False),
    Column("category", String(64), nullable=False),
    Column("adult", Boolean, nullable=False, default=False),
    # ISO country codes; empty: available everywhere.
    Column("available_regions", JSON, nullable=False, default=list),
    Column("popularity", Float, nullable=False, default=0.0),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("ix_items_category_popularity", "category", "popularity"),
)
# The popularity fallback without a category (`popular_items(category=None)`, cold start while
# the trending counters are empty) reads the top of this instead of sorting every item.
Index("ix_items_popularity_item_id", items.c.popularity.desc(), items.c.item_id)

# Every category of an item, its primary one (`items.category`) included: category requests
# (`popular_items(category=...)`) read items by any of their categories through the
# (category, item_id) index. Rewritten with the item by every upsert.
item_categories = Table(
    "item_categories",
    metadata,
    Column("item_id", BigInteger, primary_key=True, autoincrement=False),
    Column("category", String(64), primary_key=True),
    Index("ix_item_categories_category_item_id", "category", "item_id"),
)

interactions = Table(
    "interactions",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("event_id", String(128), nullable=False, unique=True),
    Column("user_id", String(128), nullable=False, index=True),
    Column("item_id", BigInteger, nullable=False),
    Column("kind", String(16), nullable=False),
    Column("value", Float, nullable=False, default=0.0),
    Column("event_time", DateTime(timezone=True), nullable=False),
    Column("surface", String(32), nullable=False, default=""),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("action", String(64), nullable=False),
    Column("subject", String(128), nullable=False, index=True),
    Column("details", JSON, nullable=False, default=dict),
    Column("at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# Tombstones: one row per erased user, named like the audit log (`hashed_subject`), never by the
# id. Written by erasure; every loader skips the users found here, so reloading a catalogue or
# a feature snapshot does not bring an erased user back.
erased_users = Table(
    "erased_users",
    metadata,
    Column("subject", String(128), primary_key=True),
    Column("erased_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# One counter per catalogue table, bumped in the transaction of every write to it
# (`SqlMetadataRepository.upsert_items`): serving processes poll it to drop item metadata they
# cached before the write (adapters/metadata_cache).
catalogue_version = Table(
    "catalogue_version",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("version", BigInteger, nullable=False),
)
