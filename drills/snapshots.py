"""Bad index publications while the platform serves: a snapshot whose file was corrupted after
publishing (its manifest no longer matches), and one whose manifest was rewritten to match
corrupted contents (each item's vector swapped with another's: a valid index that answers
wrongly). Each is published as the shard's CURRENT version while load runs."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable

import numpy as np

from drills.core import Observed, timed, under_load
from drills.platform import Platform
from drills.report import DrillResult

SHARD = 5


def _manager(platform: Platform):  # type: ignore[no-untyped-def]
    from recsys.adapters.snapshots.local import LocalSnapshotStore
    from recsys.index.snapshots import SnapshotManager

    return SnapshotManager(
        LocalSnapshotStore(platform.settings["index"]["snapshot_dir"]), keep_versions=5
    )


def _serving_version(platform: Platform) -> str | None:
    """The index version shard SHARD reports serving (recsys_index_info)."""
    import urllib.request

    try:
        port = platform.metrics_port(f"shard-{SHARD}")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as answer:
            body = answer.read().decode()
    except (OSError, KeyError, ValueError):
        return None
    for line in body.splitlines():
        if line.startswith("recsys_index_info{"):
            labels = dict(
                part.split("=", 1)
                for part in line[line.index("{") + 1 : line.index("}")].split(",")
            )
            return labels.get("index_version", "").strip('"')
    return None


def _publish_copy(
    platform: Platform,
    version: str,
    *,
    shuffled: bool,
    damage: Callable[[str], None] | None = None,
) -> str:
    """Publishes shard SHARD's serving index again as `version` (CURRENT), with its golden
    queries; `shuffled`: each item gets another item's vector (the manifest matches)."""
    from recsys.index.canary import GOLDEN_FILE
    from recsys.index.embeddings_file import load_embeddings
    from recsys.index.shard_index import ShardIndex

    manager = _manager(platform)
    serving = manager.store.current(SHARD)
    manifest = manager.manifest(SHARD, serving)
    embeddings = load_embeddings(platform.deployment / "training" / "item_embeddings.npz")
    mine = embeddings.item_ids % manifest.num_shards == SHARD
    vectors = embeddings.vectors[mine]
    if shuffled:
        vectors = vectors[np.random.default_rng(11).permutation(len(vectors))]
    # The sample deployment's shards are exact (flat) indexes: no shared quantizer to reuse.
    copy = ShardIndex.build(
        manifest.spec, shard_id=SHARD, num_shards=manifest.num_shards,
        item_ids=embeddings.item_ids[mine], vectors=vectors, index_version=version,
        embedding_version=manifest.embedding_version, built_at=dt.datetime.now(dt.UTC),
    )  # fmt: skip
    golden = manager.store.read_file(SHARD, serving, GOLDEN_FILE)
    manager.publish(copy, extra_files={GOLDEN_FILE: golden}, make_current=False)
    if damage is not None:
        damage(version)  # before CURRENT names it: the watcher never sees it whole
    manager.store.set_current(SHARD, version)
    return serving


def _corrupt_file(platform: Platform, version: str) -> None:
    from recsys.index.shard_index import INDEX_FILE

    store = _manager(platform).store
    path = store.root / f"shard-{SHARD:03d}" / "versions" / version / INDEX_FILE
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _bad_publication(platform: Platform, *, shuffled: bool) -> DrillResult:
    kind = "canary" if shuffled else "checksum"
    metric = (
        "recsys_index_canary_failures_total" if shuffled else "recsys_index_snapshot_refusals_total"
    )

    def run(result: DrillResult) -> None:
        before = platform.metric(f"shard-{SHARD}", metric) or 0.0
        serving_before = _serving_version(platform)
        marks: dict[str, str] = {}
        version = f"drill-{kind}-{int(time.time())}"

        def fault() -> None:
            if shuffled:
                marks["previous"] = _publish_copy(platform, version, shuffled=True)
            else:
                # Published whole, then a byte of its index file changes (disk or copy damage).
                marks["previous"] = _publish_copy(
                    platform, version, shuffled=False,
                    damage=lambda name: _corrupt_file(platform, name),
                )  # fmt: skip

        observed: Observed = under_load(platform, before_s=6, fault=fault, after_s=20)
        observed.fill(result, None)
        errors = observed.result.error_count
        result.check(f"client errors: {errors}; aim 0", errors == 0)
        after = platform.metric(f"shard-{SHARD}", metric) or 0.0
        result.check(
            f'{metric}{{shard_id="{SHARD}"}} went from {before:.0f} to {after:.0f}; aim raised',
            after > before,
        )
        serving_after = _serving_version(platform)
        result.check(
            f"shard {SHARD} serves {serving_after} after the drill (before: {serving_before}); "
            f"aim the previous version, not {version}",
            serving_after == serving_before == marks["previous"],
        )
        current = _manager(platform).store.current(SHARD)
        result.check(f"CURRENT names {current} again", current == marks["previous"])
        partial = observed.count("partial_retrieval")
        result.check(f"answers missing a shard meanwhile: {partial}; aim 0", partial == 0)
        result.notes.append(
            "caught by the golden-query canary right after the swap (the manifest matched, so "
            "checksum verification passed): the wrong version served searches between the swap "
            "and the canary's check, then the shard rolled back to the newest older version "
            "that passes"
            if shuffled
            else "caught by the manifest checksum (sha256 of every file) when the shard's snapshot "
            "watcher tried to load it; CURRENT was pointed back at the serving version"
        )

    name = (
        "snapshot with a rewritten manifest matching corrupted contents"
        if shuffled else "corrupted snapshot published"
    )  # fmt: skip
    criterion = (
        "caught by its check (the canary, after the swap) and rolled back, the previous version "
        "serves, 0 client errors, alert metric raised"
        if shuffled
        else "refused by its check, the previous version serves, 0 client errors, alert metric "
        "raised"
    )
    return timed(name, criterion, run)


def corrupted_snapshot(platform: Platform) -> DrillResult:
    return _bad_publication(platform, shuffled=False)


def rewritten_manifest(platform: Platform) -> DrillResult:
    return _bad_publication(platform, shuffled=True)
