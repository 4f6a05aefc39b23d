"""Alembic environment: migrations run on a synchronous engine built from recsys settings."""

from __future__ import annotations

from alembic import context

from recsys.metadata.database import create_migration_engine
from recsys.metadata.tables import metadata
from recsys.settings import DatabaseSettings

settings: DatabaseSettings = context.config.attributes["database_settings"]
engine = create_migration_engine(settings)
with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table_schema=settings.schema_name or None,
    )
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
