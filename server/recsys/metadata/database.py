"""Engines from settings: async for serving, sync for migrations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from recsys.settings import DatabaseSettings


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def describe_error(error: BaseException) -> str:
    """One line naming a database error: the driver's first line, without the statement
    SQLAlchemy appends (thousands of placeholders for a batch) or the driver's DETAIL lines,
    which can quote row values."""
    original = getattr(error, "orig", None)
    source: BaseException = original if isinstance(original, BaseException) else error
    lines = str(source).strip().splitlines()
    first = lines[0].strip() if lines else ""
    if source is error:
        return first or type(error).__name__
    return f"({type(source).__module__}.{type(source).__qualname__}) {first}".rstrip()


def _prepare_sqlite_path(url: str) -> None:
    database = make_url(url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)


def _postgres_options(settings: DatabaseSettings) -> dict[str, Any]:
    options = f"-c statement_timeout={settings.statement_timeout_ms}"
    if settings.schema_name:
        options += f" -c search_path={settings.schema_name}"
    # What pg_stat_activity shows operators: the platform, and the schema when it has one.
    name = f"recsys/{settings.schema_name}" if settings.schema_name else "recsys"
    return {"options": options, "application_name": name}


def create_engine(settings: DatabaseSettings) -> AsyncEngine:
    """The serving engine. Both engines hide bound parameters from error messages: a failed
    batch insert would otherwise print every row it carried (user ids, ages) into logs."""
    if is_sqlite(settings.url):
        _prepare_sqlite_path(settings.url)
        return create_async_engine(settings.url, hide_parameters=True)
    return create_async_engine(
        settings.url,
        hide_parameters=True,
        pool_size=settings.pool_size,
        max_overflow=settings.max_overflow,
        pool_timeout=settings.pool_timeout_seconds,
        pool_recycle=settings.pool_recycle_seconds,
        pool_pre_ping=settings.pool_pre_ping,
        connect_args=_postgres_options(settings),
    )


def create_migration_engine(settings: DatabaseSettings) -> Engine:
    """A synchronous engine on the same database (aiosqlite -> pysqlite; psycopg does both)."""
    url = make_url(settings.url)
    if url.get_backend_name() == "sqlite":
        _prepare_sqlite_path(settings.url)
        return create_sync_engine(url.set(drivername="sqlite"), hide_parameters=True)
    return create_sync_engine(url, hide_parameters=True, connect_args=_postgres_options(settings))
