"""`recsys backup` on an embedded deployment (SQLite, in-memory feature store) in folders."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from recsys.backup.inventory import apply_retention
from recsys.backup.location import FolderLocation
from recsys.backup.manifest import MANIFEST_FILE, BackupManifest
from recsys.cli import app
from recsys.settings import BackupSettings
from tests.backup.conftest import Source

runner = CliRunner()


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["backup", *args])
    return result.exit_code, result.output


def create(source: Source, backups: Path) -> BackupManifest:
    code, output = invoke("create", "--config", str(source.settings_file), "--to", str(backups))
    assert code == 0, output
    (backup_id,) = [line.split()[1] for line in output.splitlines() if line.startswith("backup ")]
    return BackupManifest.model_validate_json((backups / backup_id / MANIFEST_FILE).read_text())


@pytest.mark.e2e
def test_a_backup_restores_into_an_empty_folder_and_serves_the_same_versions(
    source: Source, tmp_path: Path
) -> None:
    backups = tmp_path / "backups"
    manifest = create(source, backups)
    assert manifest.versions.release_id == "r-1"
    assert manifest.versions.index_version == source.index_version
    assert manifest.versions.embedding_version == source.embedding_version
    assert manifest.versions.model_version == "ranker:1"
    counts = manifest.counts
    assert (counts.items, counts.users) == (300, 80)
    assert counts.interactions == 800
    assert counts.user_embeddings == counts.feature_users == 80
    assert counts.index_items == 300
    newest = max(event.event_time for event in source.catalogue.interactions if event.event_time)
    assert manifest.newest_interaction_at == newest.astimezone(dt.UTC)
    assert manifest.quality is not None
    assert manifest.quality.ndcg > 0
    paths = {entry.path for entry in manifest.files}
    assert {"database/interactions.jsonl.gz", "features/features.npz"} <= paths
    assert "releases/CURRENT" in paths
    assert "artifacts/item_neighbours.npz" in paths
    assert any(path.startswith("snapshots/shard-001/") for path in paths)
    assert all(not path.startswith(".") for path in paths)

    code, output = invoke("list", "--from", str(backups))
    assert code == 0, output
    assert manifest.backup_id in output, output
    code, output = invoke("verify", "--from", str(backups))
    assert code == 0, output
    assert f"{manifest.backup_id}: ok" in output, output

    target = tmp_path / "restored"
    report = tmp_path / "report.json"
    code, output = invoke(
        "restore", "latest", "--from", str(backups), "--into", str(target), "--report", str(report)
    )
    assert code == 0, output
    checks = json.loads(report.read_text())["checks"]
    assert checks, checks
    assert all(check["ok"] for check in checks), checks
    assert {check["name"] for check in checks} >= {
        "index version",
        "model version",
        "items",
        "sample users get recommendations",
        "quality: NDCG@10 of 40 users",
    }
    # A deployment of its own: nothing points back at the source.
    settings_text = (target / "recsys.toml").read_text()
    assert str(source.folder) not in settings_text
    assert str(target) in settings_text
    with sqlite3.connect(target / "recsys.db") as database:
        (rows,) = database.execute("SELECT count(*) FROM interactions").fetchone()
    assert rows == 800
    assert not (target / ".restoring").exists()


@pytest.mark.e2e
def test_a_corrupt_file_is_named_and_nothing_is_restored(source: Source, tmp_path: Path) -> None:
    backups = tmp_path / "backups"
    manifest = create(source, backups)
    victim = next(entry for entry in manifest.files if entry.path.endswith("index.faiss"))
    path = backups / manifest.backup_id / victim.path
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))

    code, output = invoke("verify", manifest.backup_id, "--from", str(backups))
    assert code == 1, output
    assert victim.path in output, output
    assert "CORRUPT" in output, output
    target = tmp_path / "restored"
    code, output = invoke("restore", "--from", str(backups), "--into", str(target))
    assert code == 1, output
    assert victim.path in output
    assert "SHA-256" in output
    assert not any(target.iterdir())


@pytest.mark.e2e
def test_a_target_that_holds_data_is_refused_unless_forced(source: Source, tmp_path: Path) -> None:
    backups = tmp_path / "backups"
    create(source, backups)
    target = tmp_path / "restored"
    target.mkdir()
    (target / "recsys.db").write_text("someone's data")
    code, output = invoke("restore", "--from", str(backups), "--into", str(target))
    assert code == 1, output
    assert "not empty" in output, output
    assert "--force" in output, output
    assert (target / "recsys.db").read_text() == "someone's data"
    code, output = invoke(
        "restore", "--from", str(backups), "--into", str(target), "--force", "--no-validate"
    )
    assert code == 0, output
    with sqlite3.connect(target / "recsys.db") as database:
        (rows,) = database.execute("SELECT count(*) FROM items").fetchone()
    assert rows == 300


def test_an_unknown_backup_is_an_error(tmp_path: Path) -> None:
    code, output = invoke(
        "restore",
        "20200101T000000000Z-0000",
        "--from",
        str(tmp_path),
        "--into",
        str(tmp_path / "x"),
    )
    assert code == 1
    assert "no backup 20200101T000000000Z-0000" in output


def _fake_backup(root: Path, backup_id: str, complete: bool = True) -> None:
    folder = root / backup_id
    folder.mkdir(parents=True)
    if complete:
        (folder / MANIFEST_FILE).write_text("{}")


def test_retention_keeps_the_newest_and_drops_the_old(tmp_path: Path) -> None:
    location = FolderLocation(tmp_path)
    now = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.UTC)
    ids = [
        (now - dt.timedelta(hours=hours)).strftime("%Y%m%dT%H%M%S000Z") + "-abcd"
        for hours in (30, 5, 2, 1, 0)
    ]
    for backup_id in ids:
        _fake_backup(tmp_path, backup_id)
    _fake_backup(tmp_path, "19990101T000000000Z-0000", complete=False)  # not a complete backup
    removed = apply_retention(
        location, BackupSettings(keep=3, max_age_hours=24), protect=ids[-1], now=now
    )
    assert sorted(removed) == sorted(ids[:2])
    assert location.backup_ids() == ids[2:]
    assert (tmp_path / "19990101T000000000Z-0000").is_dir()


def test_retention_never_deletes_the_newest_backup(tmp_path: Path) -> None:
    location = FolderLocation(tmp_path)
    now = dt.datetime(2026, 12, 7, tzinfo=dt.UTC)
    old = ["20261101T000000000Z-0001", "20261102T000000000Z-0002"]
    for backup_id in old:
        _fake_backup(tmp_path, backup_id)
    # Every backup is past the age limit; the newest stays whatever it is.
    removed = apply_retention(
        location, BackupSettings(keep=None, max_age_hours=1), protect="none", now=now
    )
    assert removed == [old[0]]
    assert location.backup_ids() == [old[1]]


@pytest.mark.e2e
def test_create_applies_retention(source: Source, tmp_path: Path) -> None:
    backups = tmp_path / "backups"
    settings_file = source.settings_file
    settings_file.write_text(
        settings_file.read_text().replace("[backup]\n", "[backup]\nkeep = 1\n")
    )
    first = create(source, backups)
    second = create(source, backups)
    assert FolderLocation(backups).backup_ids() == [second.backup_id]
    assert first.backup_id != second.backup_id
