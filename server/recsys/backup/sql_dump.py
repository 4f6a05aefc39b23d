"""A portable dump of the metadata database: one gzipped JSON-lines file per table, read through
SQLAlchemy in one snapshot (PostgreSQL REPEATABLE READ, read only; SQLite one explicit
transaction), so every table is of the same instant. Loading runs the migrations on the target
first, then inserts the rows by column name: a PostgreSQL dump loads into SQLite and back.

    database/<table>.jsonl.gz    line 1 {"table": ..., "columns": [...]}, then one JSON array
                                 per row; times as ISO 8601 in UTC
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, DateTime, Table, func, inspect, select, text
from sqlalchemy.exc import SQLAlchemyError

from recsys.backup.errors import BackupError
from recsys.metadata import tables
from recsys.metadata.database import create_migration_engine, describe_error, is_sqlite
from recsys.settings import DatabaseSettings

FOLDER = "database"
# Every table of the schema, in an order that loads (no table refers to a later one).
TABLES: tuple[Table, ...] = tuple(tables.metadata.sorted_tables)
# Tables whose rows make a deployment non-empty (catalogue_version holds a row after the
# migrations alone).
DATA_TABLES = ("users", "items", "interactions", "audit_log", "erased_users")
BATCH = 5_000


def dump_path(folder: Path, table: str) -> Path:
    return folder / FOLDER / f"{table}.jsonl.gz"


@dataclass
class DumpSummary:
    backend: str
    revision: str | None
    rows: dict[str, int] = field(default_factory=dict)
    # Users with a profile that is not an erasure marker.
    users: int = 0
    newest_interaction_at: dt.datetime | None = None
    # Whom the feature export asks for: profiles and everyone with interactions.
    user_ids: set[str] = field(default_factory=set)
    # Users with at least one interaction (the quality probe's candidates).
    interaction_users: set[str] = field(default_factory=set)
    item_ids: list[int] = field(default_factory=list)


def _as_utc(value: dt.datetime) -> dt.datetime:
    # SQLite hands back the naive UTC time the adapters wrote.
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def _encoders(table: Table) -> list[bool]:
    return [isinstance(column.type, DateTime) for column in table.columns]


def _encode(row: Sequence[Any], is_time: list[bool]) -> list[Any]:
    return [
        _as_utc(value).isoformat() if timed and value is not None else value
        for value, timed in zip(row, is_time, strict=True)
    ]


def _begin_snapshot(connection: Connection, sqlite: bool) -> None:
    if sqlite:
        # pysqlite opens no transaction for SELECTs: each would see its own instant.
        connection.exec_driver_sql("BEGIN")
    else:
        # The first statement of the transaction (REPEATABLE READ is set on the connection).
        connection.exec_driver_sql("SET TRANSACTION READ ONLY")


def dump_database(settings: DatabaseSettings, folder: Path) -> DumpSummary:
    """Writes every table under `folder/database/`; BackupError when the database cannot be read."""
    from alembic.runtime.migration import MigrationContext

    sqlite = is_sqlite(settings.url)
    engine = create_migration_engine(settings)
    summary = DumpSummary(backend="sqlite" if sqlite else engine.dialect.name, revision=None)
    (folder / FOLDER).mkdir(parents=True, exist_ok=True)
    try:
        with engine.connect() as base:
            connection = base.execution_options(
                isolation_level="AUTOCOMMIT" if sqlite else "REPEATABLE READ"
            )
            _begin_snapshot(connection, sqlite)
            try:
                summary.revision = MigrationContext.configure(connection).get_current_revision()
                for table in TABLES:
                    summary.rows[table.name] = _dump_table(connection, table, folder, summary)
            finally:
                if sqlite:
                    connection.exec_driver_sql("ROLLBACK")
                else:
                    connection.rollback()
    except SQLAlchemyError as error:
        raise BackupError(f"cannot read the metadata database: {describe_error(error)}") from error
    finally:
        engine.dispose()
    return summary


def _dump_table(connection: Connection, table: Table, folder: Path, summary: DumpSummary) -> int:
    is_time = _encoders(table)
    names = [column.name for column in table.columns]
    order = list(table.primary_key.columns)
    result = connection.execution_options(yield_per=BATCH).execute(select(table).order_by(*order))
    count = 0
    with gzip.open(dump_path(folder, table.name), "wt", encoding="utf-8", compresslevel=6) as out:
        out.write(json.dumps({"table": table.name, "columns": names}) + "\n")
        for row in result:
            out.write(json.dumps(_encode(row, is_time), separators=(",", ":")) + "\n")
            count += 1
            _observe(table.name, row._mapping, summary)
    return count


def _observe(name: str, row: Any, summary: DumpSummary) -> None:
    """What the manifest and the feature export need, gathered while the rows stream by."""
    if name == "users":
        if row["deleted_at"] is None:
            summary.users += 1
            summary.user_ids.add(row["user_id"])
    elif name == "items":
        summary.item_ids.append(int(row["item_id"]))
    elif name == "interactions":
        summary.user_ids.add(row["user_id"])
        summary.interaction_users.add(row["user_id"])
        moment = _as_utc(row["event_time"])
        if summary.newest_interaction_at is None or moment > summary.newest_interaction_at:
            summary.newest_interaction_at = moment


def read_rows(folder: Path, table: str) -> Iterator[dict[str, Any]]:
    """The dumped rows of a table as column -> value (times as aware datetimes)."""
    target = next(candidate for candidate in TABLES if candidate.name == table)
    timed = {column.name for column in target.columns if isinstance(column.type, DateTime)}
    with gzip.open(dump_path(folder, table), "rt", encoding="utf-8") as source:
        header = json.loads(source.readline())
        columns: list[str] = header["columns"]
        for line in source:
            values = json.loads(line)
            row = dict(zip(columns, values, strict=True))
            for name in timed.intersection(row):
                if row[name] is not None:
                    row[name] = dt.datetime.fromisoformat(row[name])
            yield row


def row_counts(settings: DatabaseSettings) -> dict[str, int]:
    """Rows of each data table of the target (absent tables count 0)."""
    engine = create_migration_engine(settings)
    try:
        with engine.connect() as connection:
            present = set(inspect(connection).get_table_names())
            return {
                name: int(connection.execute(select(func.count()).select_from(table)).scalar_one())
                for name in DATA_TABLES
                if name in present
                for table in [tables.metadata.tables[name]]
            }
    except SQLAlchemyError as error:
        raise BackupError(f"cannot read the target database: {describe_error(error)}") from error
    finally:
        engine.dispose()


def load_database(settings: DatabaseSettings, folder: Path, *, replace: bool) -> dict[str, int]:
    """Migrates the target to the head revision, then loads every dumped table in one
    transaction (`replace`: the target's rows go first). Returns the rows loaded per table."""
    from recsys.metadata.migrate import upgrade

    try:
        upgrade(settings)
    except SQLAlchemyError as error:
        raise BackupError(f"cannot migrate the target database: {describe_error(error)}") from error
    engine = create_migration_engine(settings)
    loaded: dict[str, int] = {}
    try:
        with engine.begin() as connection:
            for table in reversed(TABLES):
                if replace or table.name == "catalogue_version":
                    connection.execute(table.delete())
            for table in TABLES:
                loaded[table.name] = _load_table(connection, table, folder)
            if connection.dialect.name == "postgresql":
                _advance_sequences(connection)
    except SQLAlchemyError as error:
        raise BackupError(f"cannot load the SQL dump: {describe_error(error)}") from error
    finally:
        engine.dispose()
    return loaded


def _load_table(connection: Connection, table: Table, folder: Path) -> int:
    if not dump_path(folder, table.name).is_file():
        return 0
    known = {column.name for column in table.columns}
    count = 0
    batch: list[dict[str, Any]] = []
    for row in read_rows(folder, table.name):
        if unknown := set(row) - known:
            raise BackupError(
                f"the dump of {table.name} has columns {sorted(unknown)} this schema lacks: "
                "restore with the release that made the backup"
            )
        batch.append(row)
        if len(batch) == BATCH:
            connection.execute(table.insert(), batch)
            count += len(batch)
            batch = []
    if batch:
        connection.execute(table.insert(), batch)
        count += len(batch)
    return count


def _advance_sequences(connection: Connection) -> None:
    """Serial ids were loaded as they were: their sequences go past them, or the next insert
    would collide."""
    for table in TABLES:
        for column in table.primary_key.columns:
            if column.autoincrement is True or (
                column.autoincrement == "auto" and column.type.python_type is int
            ):
                sequence = connection.execute(
                    text("SELECT pg_get_serial_sequence(:table, :column)"),
                    {"table": table.name, "column": column.name},
                ).scalar()
                if sequence is None:
                    continue
                connection.execute(
                    text(
                        f"SELECT setval(:sequence, COALESCE((SELECT MAX({column.name}) "
                        f"FROM {table.name}), 0) + 1, false)"
                    ),
                    {"sequence": sequence},
                )
