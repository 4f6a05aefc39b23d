"""Where the offline commands read the tombstones of erased users: the configured metadata
store. `recsys data features` and `recsys train` (which otherwise need no database) consult it
so that no reload or retraining brings an erased user back."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from recsys.ports.metadata import MetadataRepository
from recsys.settings import DatabaseSettings, RecsysSettings


def absent_sqlite_file(settings: DatabaseSettings) -> Path | None:
    """The configured SQLite database when it is an in-memory one or a file that does not exist:
    nobody was ever erased there, and opening it would only create an empty file. None for a
    file that exists and for a server database."""
    from sqlalchemy.engine import make_url

    from recsys.metadata.database import is_sqlite

    if not is_sqlite(settings.url):
        return None
    database = make_url(settings.url).database or ":memory:"
    path = Path(database)
    return None if database != ":memory:" and path.exists() else path


@contextlib.asynccontextmanager
async def erasure_records(settings: RecsysSettings) -> AsyncIterator[MetadataRepository | None]:
    """The metadata repository holding the tombstones, opened as every command opens it (an
    SQLite file migrated in place; a server database must be at the head revision), or None
    when the database is an SQLite file that does not exist. A server database that cannot be
    reached, or is at an older revision, raises: a privacy check is never skipped silently."""
    from recsys.metadata.migrate import prepare_schema
    from recsys.registry import create_adapter

    if absent_sqlite_file(settings.database) is not None:
        yield None
        return
    await asyncio.to_thread(prepare_schema, settings.database)
    metadata: MetadataRepository = create_adapter("metadata", settings.recommend.metadata, settings)
    try:
        yield metadata
    finally:
        await metadata.close()
