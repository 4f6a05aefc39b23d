"""Backups of a deployment on PostgreSQL and Redis (schemas and namespaces of its own), and a
backup location behind an fsspec URL."""

from __future__ import annotations

import asyncio
import datetime as dt
import importlib.util
import json
import os
import re
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import text
from typer.testing import CliRunner

from recsys.backup.location import FsspecLocation
from recsys.backup.restore import to_toml
from recsys.cli import app
from recsys.metadata.database import create_migration_engine
from recsys.settings import DatabaseSettings, RecsysSettings, load_settings
from tests.backup.conftest import Source
from tests.support.services import REDIS_URL, require_postgres, require_redis

runner = CliRunner()


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["backup", *args])
    return result.exit_code, result.output


def require_fsspec() -> None:
    if importlib.util.find_spec("fsspec") is not None:
        return
    message = "fsspec is not installed"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + " (CI=true: a missing dependency is a failure)")
    pytest.skip(message)


@pytest.mark.e2e
def test_a_backup_goes_to_an_fsspec_url_and_comes_back(source: Source, tmp_path: Path) -> None:
    require_fsspec()
    url = f"memory://recsys-backups-{uuid.uuid4().hex[:8]}"
    location = FsspecLocation(url)
    try:
        code, output = invoke("create", "--config", str(source.settings_file), "--to", url)
        assert code == 0, output
        (backup_id,) = location.backup_ids()
        code, output = invoke("verify", "--from", url)
        assert code == 0, output
        assert f"{backup_id}: ok" in output, output
        target = tmp_path / "restored"
        code, output = invoke("restore", backup_id, "--from", url, "--into", str(target))
        assert code == 0, output
        assert re.search(r"sample users get recommendations +pass", output), output
    finally:
        location.fs.rm(location.root, recursive=True)


def _write_settings(path: Path, body: str) -> Path:
    path.write_text(body)
    return path


def _store_settings(source: Source, database: DatabaseSettings, namespace: str) -> str:
    """The source's settings file with its metadata on PostgreSQL and features on Redis."""
    settings = tomllib.loads(source.settings_file.read_text())
    settings["features"] = {"store": "redis"}
    settings["redis"] = {"url": REDIS_URL, "namespace": namespace, "socket_timeout_ms": 5000}
    settings["database"] = {"url": database.url, "schema_name": database.schema_name}
    return to_toml(settings, "the source deployment on PostgreSQL and Redis")


async def _load_source(source: Source, settings: RecsysSettings) -> None:
    """The source deployment's data in its stores, through the loaders (not the backup code)."""
    from recsys.data.catalogue import load_catalogue
    from recsys.data.features_file import load_features, load_into_store
    from recsys.metadata.migrate import upgrade
    from recsys.registry import create_adapter

    await asyncio.to_thread(upgrade, settings.database)
    metadata = create_adapter("metadata", "sql", settings)
    features = create_adapter("feature_store", "redis", settings)
    try:
        await load_catalogue(source.catalogue, metadata=metadata, features=None)
        snapshot = load_features(source.folder / "training" / "features.npz")
        await load_into_store(snapshot, features, metadata=metadata)
    finally:
        await metadata.close()
        await features.close()


@pytest.fixture
def stores() -> Iterator[tuple[str, list[DatabaseSettings], list[str]]]:
    """Hands out PostgreSQL schemas and Redis namespaces; drops them all afterwards."""
    postgres = require_postgres()
    redis_url = require_redis()
    schemas: list[DatabaseSettings] = []
    namespaces: list[str] = []
    yield postgres, schemas, namespaces
    client = redis.Redis.from_url(redis_url)
    for namespace in namespaces:
        keys = list(client.scan_iter(match=f"{namespace}:*"))
        if keys:
            client.delete(*keys)
    client.close()
    for database in schemas:
        engine = create_migration_engine(database.model_copy(update={"schema_name": ""}))
        with engine.begin() as connection:
            connection.execute(text(f'DROP SCHEMA IF EXISTS "{database.schema_name}" CASCADE'))
        engine.dispose()


@pytest.mark.integration
@pytest.mark.e2e
def test_a_postgres_and_redis_deployment_restores_into_new_stores_and_into_sqlite(
    source: Source,
    tmp_path: Path,
    stores: tuple[str, list[DatabaseSettings], list[str]],
) -> None:
    postgres, schemas, namespaces = stores

    def new_stores() -> tuple[DatabaseSettings, str]:
        database = DatabaseSettings(url=postgres, schema_name=f"test_{uuid.uuid4().hex[:12]}")
        namespace = f"test-{uuid.uuid4().hex[:12]}"
        schemas.append(database)
        namespaces.append(namespace)
        return database, namespace

    database, namespace = new_stores()
    source_file = _write_settings(
        tmp_path / "source.toml", _store_settings(source, database, namespace)
    )
    asyncio.run(_load_source(source, load_settings(source_file)))

    backups = tmp_path / "backups"
    code, output = invoke("create", "--config", str(source_file), "--to", str(backups))
    assert code == 0, output
    assert "80 users, 800 interactions" in output
    assert "80 user embeddings" in output

    # Into another schema and namespace, as a deployment's settings name them.
    target_database, target_namespace = new_stores()
    target_file = _write_settings(
        tmp_path / "target.toml", _store_settings(source, target_database, target_namespace)
    )
    report = tmp_path / "report.json"
    code, output = invoke(
        "restore",
        "--from", str(backups),
        "--into", str(tmp_path / "restored"),
        "--config", str(target_file),
        "--report", str(report),
    )  # fmt: skip
    assert code == 0, output
    checks = json.loads(report.read_text())["checks"]
    assert all(check["ok"] for check in checks), checks
    engine = create_migration_engine(target_database)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM interactions")).scalar_one() == 800
        # The serial ids go on after the restored ones.
        next_id = connection.execute(
            text("SELECT nextval(pg_get_serial_sequence('interactions', 'id'))")
        ).scalar_one()
        assert next_id > connection.execute(text("SELECT max(id) FROM interactions")).scalar_one()
    engine.dispose()

    # The target now holds data: a second restore is refused.
    code, output = invoke(
        "restore",
        "--from", str(backups),
        "--into", str(tmp_path / "again"),
        "--config", str(target_file),
    )  # fmt: skip
    assert code == 1
    assert "the database holds" in output
    assert "feature store holds" in output

    # The PostgreSQL dump loads into SQLite and the Redis features into the in-memory store.
    code, output = invoke("restore", "--from", str(backups), "--into", str(tmp_path / "embedded"))
    assert code == 0, output
    assert re.search(r"quality: NDCG@10 of 40 users +pass", output), output


@pytest.mark.integration
def test_the_sql_dump_reads_every_table_in_one_snapshot(
    tmp_path: Path,
    stores: tuple[str, list[DatabaseSettings], list[str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Rows written while the dump runs (after its first table) are in none of its tables."""
    from sqlalchemy import insert

    from recsys.backup import sql_dump
    from recsys.metadata import tables
    from recsys.metadata.migrate import upgrade

    postgres, schemas, _ = stores
    database = DatabaseSettings(url=postgres, schema_name=f"test_{uuid.uuid4().hex[:12]}")
    schemas.append(database)
    upgrade(database)
    writer = create_migration_engine(database)

    def write(number: int) -> None:
        with writer.begin() as connection:
            connection.execute(
                insert(tables.users).values(
                    user_id=f"u{number}",
                    blocked_categories=[],
                    onboarding_categories=[],
                    liked_item_ids=[],
                )
            )
            connection.execute(
                insert(tables.interactions).values(
                    event_id=f"e{number}",
                    user_id=f"u{number}",
                    item_id=number,
                    kind="click",
                    value=1.0,
                    event_time=dt.datetime.now(dt.UTC),
                    surface="",
                )
            )

    write(1)
    dump_table = sql_dump._dump_table
    written: list[int] = []

    def dump_then_write(*arguments: Any) -> int:
        count = dump_table(*arguments)
        if not written:
            write(2)  # committed while the dump's transaction is open
            written.append(2)
        return count

    monkeypatch.setattr(sql_dump, "_dump_table", dump_then_write)
    summary = sql_dump.dump_database(database, tmp_path)
    writer.dispose()
    assert written
    assert summary.rows["users"] == 1
    assert summary.rows["interactions"] == 1
    assert summary.user_ids == {"u1"}
