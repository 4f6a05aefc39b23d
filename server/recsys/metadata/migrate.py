"""Runs the Alembic migrations of the metadata schema (`recsys db upgrade`)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import text

from recsys.metadata.database import create_migration_engine, is_sqlite
from recsys.settings import DatabaseSettings

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def alembic_config(settings: DatabaseSettings) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["database_settings"] = settings
    return config


def upgrade(settings: DatabaseSettings, revision: str = "head") -> None:
    """Creates the schema (PostgreSQL) and brings it to `revision`. Idempotent."""
    if settings.schema_name and not is_sqlite(settings.url):
        engine = create_migration_engine(settings.model_copy(update={"schema_name": ""}))
        with engine.begin() as connection:
            connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{settings.schema_name}"'))
        engine.dispose()
    command.upgrade(alembic_config(settings), revision)


def current_revision(settings: DatabaseSettings) -> str | None:
    from alembic.runtime.migration import MigrationContext

    engine = create_migration_engine(settings)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()
