"""Runs the Alembic migrations of the metadata schema (`recsys db upgrade`)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import text

from recsys.errors import ConfigurationError
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


def head_revision(settings: DatabaseSettings) -> str | None:
    """The newest revision the migrations define."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config(settings)).get_current_head()


def prepare_schema(settings: DatabaseSettings) -> None:
    """What every process that opens the metadata store runs first (`recsys serve`, `data load`,
    `demo`, `eval`): embedded SQLite is migrated in place, since nobody else would; a server
    database must already be at head, changed only on purpose with `recsys db upgrade`."""
    if is_sqlite(settings.url):
        upgrade(settings)
        return
    revision = current_revision(settings)
    if revision != head_revision(settings):
        raise ConfigurationError(
            f"the metadata database is at revision {revision}; run `recsys db upgrade`"
        )


def current_revision(settings: DatabaseSettings) -> str | None:
    from alembic.runtime.migration import MigrationContext

    engine = create_migration_engine(settings)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()
