"""The checks after a restore (seed "Post-Failover Validation" and "Data Integrity
Verification"): the index verifies and holds the backup's version and items, the model version
and the counts match, sample users get recommendations from the restored deployment through the
serving code (the embedded composition of `recsys serve embedded`, over gRPC) with the backup's
versions, and the quality probe scores at least 95% of the backup's baseline."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from recsys.backup.manifest import BackupManifest
from recsys.backup.restore import Check
from recsys.errors import RecsysError
from recsys.index.shard_index import ShardIndex
from recsys.settings import RecsysSettings, load_settings

QUALITY_FLOOR = 0.95

# The validation serves on a loopback port of its own, without limits or budgets that a loaded
# machine could run into (a timeout would degrade an answer, not the restore).
SERVING_OVERRIDES: dict[str, dict[str, Any]] = {
    "server": {"host": "127.0.0.1", "port": 0, "shutdown_drain_seconds": 0.0},
    "metrics": {"enabled": False},
    "logging": {"access_log": False, "level": "WARNING"},
    "recommend": {
        "rate_limit_enabled": False,
        "feature_timeout_ms": 5_000,
        "cache_timeout_ms": 5_000,
        "metadata_timeout_ms": 5_000,
        "retrieve_timeout_ms": 10_000,
        "rank_timeout_ms": 10_000,
    },
    "candidates": {"neighbours_timeout_ms": 5_000},
    "retrieve": {"shard_timeout_ms": 10_000},
    "rank": {"feature_timeout_ms": 5_000, "timeout_ms": 5_000, "reload_poll_seconds": 0},
    "index": {"snapshot_poll_seconds": 0, "canary_interval_seconds": 0},
}


def _equal(name: str, measured: object, expected: object) -> Check:
    return Check(name, measured == expected, str(measured), str(expected))


def _index_checks(
    settings: RecsysSettings, manifest: BackupManifest
) -> tuple[list[Check], list[ShardIndex]]:
    from recsys.index.snapshots import Expectations, SnapshotManager
    from recsys.registry import create_adapter

    store = create_adapter("snapshot_store", settings.index.snapshot_store, settings)
    manager = SnapshotManager(store)
    num_shards = settings.index.num_shards
    shards: list[ShardIndex] = []
    versions: set[str | None] = set()
    problems = []
    for shard_id in range(num_shards):
        current = store.current(shard_id)
        versions.add(current)
        if current is None:
            problems.append(f"shard {shard_id}: no CURRENT")
            continue
        try:
            _, shard = manager.verify(
                current,
                Expectations(shard_id, num_shards, dimension=settings.index.spec.dimension),
            )
        except RecsysError as error:
            problems.append(error.message)
            continue
        shards.append(shard)
    items = sum(shard.item_count for shard in shards)
    verified = f"{len(shards)}/{num_shards} shards verify"
    return [
        Check("index snapshots verify", not problems, "; ".join(problems) or verified, verified),
        _equal(
            "index version",
            versions.pop() if len(versions) == 1 else sorted(map(str, versions)),
            manifest.versions.index_version,
        ),
        _equal("index items (all searchable)", items, manifest.counts.index_items),
    ], shards


def _count_checks(settings: RecsysSettings, manifest: BackupManifest) -> list[Check]:
    from sqlalchemy import func, select

    from recsys.metadata import tables
    from recsys.metadata.database import create_migration_engine

    engine = create_migration_engine(settings.database)
    try:
        with engine.connect() as connection:

            def count(query: Any) -> int:
                return int(connection.execute(query).scalar_one())

            items = count(select(func.count()).select_from(tables.items))
            users = count(
                select(func.count())
                .select_from(tables.users)
                .where(tables.users.c.deleted_at.is_(None))
            )
            interactions = count(select(func.count()).select_from(tables.interactions))
    finally:
        engine.dispose()
    counts = manifest.counts
    return [
        _equal("items", items, counts.items),
        _equal("users", users, counts.users),
        _equal("interactions", interactions, counts.interactions),
    ]


async def validate_restore(
    manifest: BackupManifest, settings_file: Path, *, sample_users: int = 20
) -> list[Check]:
    """Every check of the deployment `settings_file` describes, failed ones included (a failed
    check is not raised)."""
    from recsys import services
    from recsys.backup.create import model_version_of
    from recsys.release import current_release

    settings = load_settings(settings_file)
    checks, shards = await asyncio.to_thread(_index_checks, settings, manifest)
    release = current_release(settings.release.directory)
    try:
        model = model_version_of(settings, release.model_version if release else None)
    except RecsysError as error:
        model = error.message
    checks.append(_equal("model version", model, manifest.versions.model_version))
    checks += await asyncio.to_thread(_count_checks, settings, manifest)
    serving = load_settings(settings_file, **SERVING_OVERRIDES)
    application = await services.build_application(serving, ["embedded"])
    try:
        port = await application.start()
        assert application.components is not None
        store = application.components.feature_store
        held = sum((await store.embedding_version_counts()).values())
        checks.append(_equal("user embeddings", held, manifest.counts.user_embeddings))
        users = _sample(manifest, sample_users)
        checks.append(await _served_check(f"127.0.0.1:{port}", users, manifest))
        if manifest.quality is not None:
            checks.append(await _quality_check(manifest, serving, store, shards))
    finally:
        await application.shutdown()
    return checks


def _sample(manifest: BackupManifest, count: int) -> list[str]:
    users = list(manifest.quality.users) if manifest.quality else []
    return users[:count] or [f"restore-check-{number}" for number in range(count)]


async def _served_check(target: str, users: list[str], manifest: BackupManifest) -> Check:
    from recsys_client import AsyncRecsysClient, ClientOptions, RecsysClientError

    answered = 0
    problems: list[str] = []
    async with AsyncRecsysClient(ClientOptions(target=target, timeout_seconds=30.0)) as client:
        for user in users:
            try:
                response = await client.recommend(user, limit=10)
            except RecsysClientError as error:
                problems.append(f"{user}: {error.code.name}")
                continue
            if not response.items:
                problems.append(f"{user}: no items")
            elif response.model_version != (manifest.versions.model_version or ""):
                problems.append(f"{user}: model {response.model_version}")
            elif response.index_version != (manifest.versions.index_version or ""):
                problems.append(f"{user}: index {response.index_version}")
            else:
                answered += 1
    measured = f"{answered}/{len(users)} answered with the backup's versions"
    if problems:
        measured += " (" + "; ".join(problems[:3]) + ")"
    expected = f"{len(users)}/{len(users)}"
    return Check("sample users get recommendations", answered == len(users), measured, expected)


async def _quality_check(
    manifest: BackupManifest, settings: RecsysSettings, store: Any, shards: list[ShardIndex]
) -> Check:
    from recsys.backup.quality import ndcg, relevant_from_database

    quality = manifest.quality
    assert quality is not None
    embeddings: dict[str, npt.NDArray[np.float32]] = {}
    for user in quality.users:
        embedding = await store.get_user_embedding(user)
        if embedding is not None:
            embeddings[user] = embedding.vector
    relevant = await asyncio.to_thread(relevant_from_database, settings.database, quality.users)
    score = await asyncio.to_thread(
        ndcg, shards, embeddings, relevant, catalogue_size=manifest.counts.items, k=quality.k
    )
    floor = QUALITY_FLOOR * quality.ndcg
    return Check(
        f"quality: NDCG@{quality.k} of {len(quality.users)} users",
        score >= floor - 1e-9,
        f"{score:.4f} ({score / quality.ndcg:.1%} of the baseline)"
        if quality.ndcg
        else f"{score:.4f}",
        f">= {floor:.4f} (95% of {quality.ndcg:.4f})",
    )
