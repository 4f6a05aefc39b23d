"""`recsys backup create`: one consistent, checksummed backup of the deployment the settings
describe, built in a staging folder and published with its manifest last.

Consistency: the SQL tables are read in one snapshot transaction; snapshot versions and model
versions are immutable once published, and CURRENT pointers are read before their files; the
feature store has no transaction, so its export is of the moments it is read (user embeddings
change only through training and `recsys migrate-embeddings`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from recsys.backup.errors import BackupError
from recsys.backup.features import (
    FEATURES_PATH,
    FeatureExport,
    export_features,
    opened_store,
    save_export,
)
from recsys.backup.inventory import apply_retention
from recsys.backup.location import BackupLocation, staging_folder
from recsys.backup.manifest import (
    MANIFEST_FILE,
    BackupManifest,
    Counts,
    Deployment,
    QualityBaseline,
    Versions,
    entries_of,
    new_backup_id,
)
from recsys.backup.quality import K, ndcg, relevant_from_rows, sample_users
from recsys.backup.sql_dump import dump_database, read_rows
from recsys.errors import RecsysError
from recsys.index.shard_index import ShardIndex
from recsys.settings import RecsysSettings

SNAPSHOTS = "snapshots"
MODELS = "models"
RELEASES = "releases"
ARTIFACTS = "artifacts"
# Settings carried into a restored deployment's settings file: what the data was served with.
CARRIED_SETTINGS: dict[str, tuple[str, ...]] = {
    "recommend": ("candidates", "surfaces", "categories", "default_country", "metadata_timeout_ms"),
    "candidates": ("neighbours", "popularity", "history_limit", "neighbours_timeout_ms"),
    "realtime": ("recent_window_seconds", "recent_keep"),
}


@dataclass
class SnapshotCopy:
    current: dict[int, str] = field(default_factory=dict)
    embedding_versions: dict[int, str] = field(default_factory=dict)
    items: int = 0
    # The CURRENT shard indexes, for the quality probe.
    shards: list[ShardIndex] = field(default_factory=list)


@dataclass(frozen=True)
class CreateResult:
    manifest: BackupManifest
    location: str
    removed: list[str]


def shard_folder(shard_id: int) -> str:
    return f"{SNAPSHOTS}/shard-{shard_id:03d}"


def copy_snapshots(
    settings: RecsysSettings, staging: Path, notes: list[str], *, keep_current: bool
) -> SnapshotCopy:
    """Every version of every shard that passes the snapshot verification (checksums, manifest,
    item counts, a canary search) and each shard's CURRENT; versions that fail are left out and
    noted, and a shard whose CURRENT fails points at its newest good version instead."""
    from recsys.index.snapshots import Expectations, SnapshotInvalid, SnapshotManager
    from recsys.registry import create_adapter

    store = create_adapter("snapshot_store", settings.index.snapshot_store, settings)
    manager = SnapshotManager(store, keep_versions=settings.index.keep_versions)
    copy = SnapshotCopy()
    num_shards = settings.index.num_shards
    for shard_id in range(num_shards):
        expected = Expectations(shard_id, num_shards, dimension=settings.index.spec.dimension)
        current = store.current(shard_id)
        good: list[str] = []
        loaded: dict[str, ShardIndex] = {}
        for version in manager.versions_newest_first(shard_id):
            try:
                manifest, shard = manager.verify(version, expected)
            except SnapshotInvalid as error:
                notes.append(f"left out snapshot {version} of shard {shard_id}: {error.message}")
                continue
            target = staging / shard_folder(shard_id) / version
            target.mkdir(parents=True)
            for name in store.list_files(shard_id, version):
                (target / name).write_bytes(store.read_file(shard_id, version, name))
            good.append(version)
            copy.embedding_versions.setdefault(shard_id, manifest.embedding_version)
            if version == current or (current is None and len(good) == 1):
                copy.embedding_versions[shard_id] = manifest.embedding_version
                loaded[version] = shard
        if not good:
            notes.append(f"shard {shard_id} has no snapshot that passes verification")
            continue
        serving = current if current in good else good[0]
        if serving != current:
            notes.append(f"shard {shard_id}: CURRENT {current} failed; the backup serves {serving}")
            _, loaded[serving] = manager.verify(serving, expected)
        copy.current[shard_id] = serving
        (staging / shard_folder(shard_id) / "CURRENT").write_text(serving + "\n")
        shard = loaded[serving]
        copy.items += shard.item_count
        if keep_current:
            copy.shards.append(shard)
    return copy


def copy_tree(source: Path | None, target: Path) -> bool:
    """A folder of the deployment as it is (hidden leftovers of writers excluded)."""
    if source is None or not source.is_dir():
        return False
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(".*"))
    return True


def model_version_of(settings: RecsysSettings, release_model: str | None) -> str | None:
    """What the deployment serves: the release's model, the pinned one, else the newest."""
    from recsys.ranking.model_repository import ModelRepository

    if release_model:
        return release_model
    repository = ModelRepository(settings.rank.model_repository, settings.rank.model_name)
    versions = repository.versions()
    version = settings.rank.model_version or (versions[0] if versions else None)
    if version is None:
        return None
    try:
        repository.read(version)
    except RecsysError as error:
        raise BackupError(f"the served model cannot be read: {error.message}") from error
    return f"{settings.rank.model_name}:{version}"


def carried_settings(settings: RecsysSettings) -> dict[str, dict[str, object]]:
    dumped = settings.model_dump(mode="json")
    return {
        section: {name: dumped[section][name] for name in names}
        for section, names in CARRIED_SETTINGS.items()
    }


async def create_backup(
    settings: RecsysSettings,
    location: BackupLocation,
    *,
    say: Callable[[str], None] | None = None,
) -> CreateResult:
    """Builds, publishes and then applies retention; raises BackupError (or BackupCorrupt) with
    the location left as it was when anything fails."""
    from recsys.release import ReleaseStore

    step = say or (lambda message: None)
    started = time.perf_counter()
    now = dt.datetime.now(dt.UTC)
    backup_id = new_backup_id(now)
    notes: list[str] = []
    with staging_folder(location, backup_id) as staging:
        release = None
        if settings.release.directory is not None:
            release = ReleaseStore(settings.release.directory).current()
        step(f"index snapshots of {settings.index.num_shards} shards")
        quality_users = settings.backup.quality_users
        snapshots = await asyncio.to_thread(
            copy_snapshots, settings, staging, notes, keep_current=quality_users > 0
        )
        step("model repository, release manifests, neighbour store")
        model_version = model_version_of(settings, release.model_version if release else None)
        if not copy_tree(settings.rank.model_repository, staging / MODELS):
            notes.append(f"no model repository at {settings.rank.model_repository}")
        has_release = copy_tree(settings.release.directory, staging / RELEASES)
        neighbours = settings.candidates.neighbours_path
        if neighbours is not None:
            (staging / ARTIFACTS).mkdir()
            shutil.copyfile(neighbours, staging / ARTIFACTS / neighbours.name)
        step("SQL dump (one snapshot transaction)")
        summary = await asyncio.to_thread(dump_database, settings.database, staging)
        step(f"feature store ({settings.features.store})")
        async with opened_store(settings) as opened:
            export = await export_features(
                opened.store,
                summary.user_ids | set(opened.preloaded_users),
                [*summary.item_ids, *opened.preloaded_items],
            )
        if export.store_user_embeddings > export.user_embeddings:
            notes.append(
                f"{export.store_user_embeddings - export.user_embeddings} users with embeddings "
                "in the feature store are unknown to the metadata and were not exported"
            )
        await asyncio.to_thread(save_export, staging / FEATURES_PATH, export)
        quality = None
        if quality_users and snapshots.shards:
            step("quality baseline")
            quality = await asyncio.to_thread(
                _baseline,
                staging,
                export,
                snapshots,
                summary.interaction_users,
                quality_users,
                len(summary.item_ids),
            )
        index_versions = set(snapshots.current.values())
        if len(index_versions) > 1:
            notes.append(f"the shards serve different index versions: {sorted(index_versions)}")
        versions = Versions(
            model_version=model_version,
            embedding_version=(
                release.embedding_version
                if release
                else next(iter(snapshots.embedding_versions.values()), None)
            ),
            index_version=next(iter(index_versions)) if len(index_versions) == 1 else None,
            release_id=release.release_id if release else None,
        )
        files = [path for path in staging.rglob("*") if path.is_file()]
        manifest = BackupManifest(
            backup_id=backup_id,
            created_at=now,
            seconds=round(time.perf_counter() - started, 3),
            deployment=Deployment(
                num_shards=settings.index.num_shards,
                index_spec=settings.index.spec.model_dump(mode="json"),
                model_name=settings.rank.model_name,
                small_model_name=settings.rank.small_model_name,
                feature_store=settings.features.store,
                database_backend=summary.backend,
                schema_revision=summary.revision,
                settings=carried_settings(settings),
                has_release=has_release,
                neighbours_file=neighbours.name if neighbours is not None else None,
            ),
            versions=versions,
            counts=Counts(
                items=summary.rows.get("items", 0),
                users=summary.users,
                interactions=summary.rows.get("interactions", 0),
                user_embeddings=export.user_embeddings,
                feature_users=len(export.user_ids),
                item_features=len(export.item_ids),
                index_items=snapshots.items,
            ),
            tables=summary.rows,
            newest_interaction_at=summary.newest_interaction_at,
            quality=quality,
            notes=notes,
            files=await asyncio.to_thread(entries_of, staging, files),
        )
        # Last: what lists a backup as complete.
        (staging / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2) + "\n")
        step(f"publishing {backup_id} to {location.description}")
        await asyncio.to_thread(location.publish, staging, backup_id)
    removed = apply_retention(location, settings.backup, protect=backup_id)
    return CreateResult(manifest, location.description, removed)


def _baseline(
    staging: Path,
    export: FeatureExport,
    snapshots: SnapshotCopy,
    active: set[str],
    count: int,
    catalogue_size: int,
) -> QualityBaseline:
    """The probe over a sample of the users with an embedding and interactions."""
    embeddings: dict[str, npt.NDArray[np.float32]] = {
        user: export.user_vectors[row]
        for row, user in enumerate(export.user_ids)
        if export.has_embedding[row]
    }
    users = sample_users(active.intersection(embeddings), count)
    relevant = relevant_from_rows(read_rows(staging, "interactions"), set(users))
    # Skips alone are no interest: such users say nothing about retrieval.
    users = [user for user in users if relevant.get(user)]
    score = ndcg(
        snapshots.shards,
        {user: embeddings[user] for user in users},
        relevant,
        catalogue_size=catalogue_size,
    )
    return QualityBaseline(k=K, ndcg=round(score, 6), users=users)
