"""`recsys backup restore`: an empty deployment brought back from a backup, then validated.

Every file is copied out of the backup and checked against the manifest before anything is
written to the target, so a corrupt backup changes nothing. Then, in order: the index snapshots
(through the SnapshotStore port, CURRENT last), the model repository, the release manifests and
the neighbour store, the SQL dump (migrations first), the feature store, and the settings file
of the restored deployment (`<folder>/recsys.toml`, for `recsys serve --config`).

    <folder>/snapshots/ models/ releases/ artifacts/    files (the k8s volume's layout)
    <folder>/features/features.npz                       in-memory feature store: its preload
    <folder>/recsys.db                                   SQLite, unless the target names a database
    <folder>/recsys.toml
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recsys.backup.create import ARTIFACTS, MODELS, RELEASES, SNAPSHOTS
from recsys.backup.errors import BackupError, TargetNotEmpty
from recsys.backup.features import (
    FEATURES_PATH,
    create_store,
    import_features,
    load_export,
    preload_snapshot,
)
from recsys.backup.location import BackupLocation
from recsys.backup.manifest import FORMAT_VERSION, BackupManifest
from recsys.backup.sql_dump import load_database, read_rows, row_counts
from recsys.domain.interactions import Interaction, InteractionKind
from recsys.settings import RecsysSettings, load_settings

SETTINGS_FILE = "recsys.toml"
STAGING = ".restoring"
# Entries an empty volume may hold.
IGNORED_ENTRIES = frozenset({"lost+found"})
RESTORED_PARTS = (SNAPSHOTS, MODELS, RELEASES, ARTIFACTS, "features", "recsys.db", SETTINGS_FILE)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    measured: str
    expected: str


@dataclass
class RestoreReport:
    backup_id: str
    folder: Path
    settings_file: Path
    manifest: BackupManifest
    # Step name -> seconds, in the order they ran.
    steps: dict[str, float] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    def as_dict(self) -> dict[str, Any]:
        return {
            "backup_id": self.backup_id,
            "folder": str(self.folder),
            "settings_file": str(self.settings_file),
            "ok": self.ok,
            "steps": self.steps,
            "checks": [vars(check) for check in self.checks],
            "notes": self.notes,
            "versions": self.manifest.versions.model_dump(),
            "counts": self.manifest.counts.model_dump(),
            "newest_interaction_at": (
                self.manifest.newest_interaction_at.isoformat()
                if self.manifest.newest_interaction_at
                else None
            ),
        }


class _Steps:
    def __init__(self, report: RestoreReport, say: Callable[[str], None]) -> None:
        self.report = report
        self.say = say

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        self.say(name)
        started = time.perf_counter()
        yield
        self.report.steps[name] = round(time.perf_counter() - started, 3)


def restored_settings(
    manifest: BackupManifest, folder: Path, target: RecsysSettings | None
) -> dict[str, dict[str, Any]]:
    """The settings of the restored deployment: the backup's shape with every path in `folder`;
    the stores the target names (`--config`), else SQLite and the in-memory feature store."""
    deployment = manifest.deployment
    carried = {section: dict(values) for section, values in deployment.settings.items()}
    settings: dict[str, dict[str, Any]] = {
        "index": {
            "num_shards": deployment.num_shards,
            "snapshot_dir": str(folder / SNAPSHOTS),
            "spec": deployment.index_spec,
        },
        "rank": {
            "model_repository": str(folder / MODELS),
            "model_name": deployment.model_name,
            "small_model_name": deployment.small_model_name,
        },
        **carried,
    }
    if deployment.neighbours_file:
        settings.setdefault("candidates", {})["neighbours_path"] = str(
            folder / ARTIFACTS / deployment.neighbours_file
        )
    if deployment.has_release:
        settings["release"] = {"directory": str(folder / RELEASES)}
    store = target.features.store if target is not None else "in_memory"
    settings["features"] = {"store": store}
    if store == "in_memory":
        settings["features"]["preload_path"] = str(folder / FEATURES_PATH)
    if target is None:
        settings["database"] = {"url": f"sqlite+aiosqlite:///{folder / 'recsys.db'}"}
    else:
        database = target.database
        settings["database"] = {"url": database.url}
        if database.schema_name:
            settings["database"]["schema_name"] = database.schema_name
        if store != "in_memory":
            settings["redis"] = target.redis.model_dump(mode="json")
    return settings


def to_toml(settings: dict[str, dict[str, Any]], header: str) -> str:
    lines = [f"# {header}"]
    for section, values in settings.items():
        lines.append(f"\n[{section}]")
        tables = {key: value for key, value in values.items() if isinstance(value, dict)}
        lines += [
            f"{key} = {_toml_value(value)}"
            for key, value in values.items()
            if not isinstance(value, dict) and value is not None
        ]
        for key, table in tables.items():
            lines.append(f"\n[{section}.{key}]")
            lines += [
                f"{name} = {_toml_value(value)}"
                for name, value in table.items()
                if value is not None
            ]
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    # A JSON string is a valid TOML basic string.
    return json.dumps(str(value))


def _entries(folder: Path) -> list[str]:
    if not folder.exists():
        return []
    return sorted(path.name for path in folder.iterdir() if path.name not in IGNORED_ENTRIES)


async def check_target_empty(folder: Path, settings: RecsysSettings, *, own_database: bool) -> None:
    """TargetNotEmpty naming what the target holds."""
    held = []
    entries = await asyncio.to_thread(_entries, folder)
    if entries:
        shown = ", ".join(entries[:5]) + (" ..." if len(entries) > 5 else "")
        held.append(f"{folder} holds {shown}")
    if not own_database:
        counts = await asyncio.to_thread(row_counts, settings.database)
        rows = {name: count for name, count in counts.items() if count}
        if rows:
            held.append(
                "the database holds " + ", ".join(f"{count} {name}" for name, count in rows.items())
            )
    if settings.features.store != "in_memory":
        store = create_store(settings)
        try:
            embeddings = sum((await store.embedding_version_counts()).values())
            default = await store.get_default_user_embedding()
        finally:
            await store.close()
        if embeddings or default is not None:
            held.append(
                f"the {settings.features.store} feature store holds {embeddings} user embeddings"
            )
    if held:
        raise TargetNotEmpty(
            "the restore target is not empty: " + "; ".join(held) + ". Restore into an empty "
            "deployment, or pass --force to replace what it holds"
        )


def _clear_folder(folder: Path) -> None:
    for name in (*RESTORED_PARTS, STAGING):
        path = folder / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _restore_snapshots(staged: Path, settings: RecsysSettings) -> None:
    from recsys.registry import create_adapter

    store = create_adapter("snapshot_store", settings.index.snapshot_store, settings)
    root = staged / SNAPSHOTS
    if not root.is_dir():
        return
    for shard_folder in sorted(root.iterdir()):
        shard_id = int(shard_folder.name.removeprefix("shard-"))
        for version in sorted(path for path in shard_folder.iterdir() if path.is_dir()):
            files = {path.name: path.read_bytes() for path in version.iterdir() if path.is_file()}
            store.write_version(shard_id, version.name, files)
        current = shard_folder / "CURRENT"
        if current.is_file():
            store.set_current(shard_id, current.read_text().strip())


def recent_interactions(staged: Path, window_seconds: int) -> list[Interaction]:
    """The dumped interactions inside the recent window (as of now), for the feature store."""
    cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=window_seconds)
    return [
        Interaction(
            row["event_id"],
            row["user_id"],
            int(row["item_id"]),
            InteractionKind(row["kind"]),
            float(row["value"]),
            row["event_time"],
            row["surface"] or "",
        )
        for row in read_rows(staged, "interactions")
        if row["event_time"] >= cutoff
    ]


async def restore_backup(
    location: BackupLocation,
    backup_id: str | None,
    folder: Path,
    *,
    target: RecsysSettings | None = None,
    force: bool = False,
    validate: bool = True,
    sample_users: int = 20,
    say: Callable[[str], None] | None = None,
) -> RestoreReport:
    """Restores into `folder` (and the target's database and feature store, when `target`
    names them); validates unless told not to. Raises TargetNotEmpty, BackupNotFound,
    BackupCorrupt or BackupError; a failed check is in the report, not raised."""
    from recsys.data.features_file import save_features

    folder = Path(await asyncio.to_thread(os.path.abspath, folder))
    resolved = location.resolve(backup_id)
    manifest = location.read_manifest(resolved)
    if manifest.format_version != FORMAT_VERSION:
        raise BackupError(
            f"backup {resolved} has format version {manifest.format_version}; this release "
            f"reads {FORMAT_VERSION}"
        )
    settings_dict = restored_settings(manifest, folder, target)
    settings = load_settings(None, **settings_dict)
    report = RestoreReport(resolved, folder, folder / SETTINGS_FILE, manifest)
    steps = _Steps(report, say or (lambda message: None))
    with steps.step("check the target is empty"):
        if force:
            _clear_folder(folder)
        else:
            await check_target_empty(folder, settings, own_database=target is None)
    staged = folder / STAGING
    try:
        with steps.step(f"copy and verify {len(manifest.files)} files"):
            for entry in manifest.files:
                await asyncio.to_thread(location.check_file, resolved, entry, staged / entry.path)
        with steps.step("index snapshots"):
            await asyncio.to_thread(_restore_snapshots, staged, settings)
        with steps.step("model repository, releases, neighbour store"):
            for part in (MODELS, RELEASES, ARTIFACTS):
                if (staged / part).is_dir():
                    (staged / part).rename(folder / part)
        with steps.step("SQL (migrations, then the dump)"):
            await asyncio.to_thread(load_database, settings.database, staged, replace=force)
        with steps.step(f"feature store ({settings.features.store})"):
            export = await asyncio.to_thread(load_export, staged / FEATURES_PATH)
            if settings.features.store == "in_memory":
                snapshot, dropped = preload_snapshot(export)
                assert settings.features.preload_path is not None
                await asyncio.to_thread(save_features, settings.features.preload_path, snapshot)
                if dropped:
                    report.notes.append(
                        f"{dropped} users without an embedding (preferences only) are not in "
                        "the in-memory store's preload"
                    )
            else:
                await _import_into_store(export, settings, staged)
        report.settings_file.write_text(
            to_toml(settings_dict, f"Restored from backup {resolved} by `recsys backup restore`.")
        )
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    if validate:
        from recsys.backup.validate import validate_restore

        with steps.step("validate"):
            report.checks = await validate_restore(
                manifest, report.settings_file, sample_users=sample_users
            )
    return report


async def _import_into_store(export: Any, settings: RecsysSettings, staged: Path) -> None:
    recent = await asyncio.to_thread(
        recent_interactions, staged, settings.realtime.recent_window_seconds
    )
    store = create_store(settings)
    try:
        await import_features(export, store, recent=recent)
    finally:
        await store.close()
