"""Versioned, verified shard snapshots: publish, load with verification, rollback, prune.

A snapshot version holds the index files and `manifest.json` (index version, shard id, number
of shards, index spec with dimension and metric, item count, embedding version, build time and
the SHA-256 of every file). Loading verifies all of it before anything is swapped in; a version
that fails is quarantined and never served.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from recsys.errors import FailedPrecondition, NotFound
from recsys.index.shard_index import ShardIndex
from recsys.index.spec import MAX_NPROBE, IndexSpec
from recsys.ports.snapshots import SnapshotStore

logger = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1


class SnapshotManifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    format_version: int = FORMAT_VERSION
    index_version: str
    shard_id: int
    num_shards: int
    spec: IndexSpec
    item_count: int
    embedding_version: str
    built_at: dt.datetime
    # File name -> SHA-256 hex digest.
    files: dict[str, str]
    # IVF: digest of the coarse quantizer (centroids, PQ codebooks) the shard probes; shards
    # of one build share it, and shards with different ones do not search like one index.
    quantizer_id: str | None = None


class SnapshotInvalid(FailedPrecondition):
    """A snapshot failed verification; it is quarantined and the serving index is kept."""

    default_reason = "SNAPSHOT_INVALID"


class SnapshotOfAnotherRelease(SnapshotInvalid):
    """An intact snapshot built from other embeddings than this deployment serves."""

    default_reason = "EMBEDDING_VERSION_MISMATCH"


@dataclass(frozen=True)
class Expectations:
    """What a loader requires of a snapshot (None: anything goes)."""

    shard_id: int
    num_shards: int
    dimension: int | None = None
    embedding_version: str | None = None


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class SnapshotManager:
    def __init__(self, store: SnapshotStore, *, keep_versions: int = 3) -> None:
        self.store = store
        self.keep_versions = keep_versions

    # ------------------------------------------------------------------ writing

    def publish(
        self,
        shard: ShardIndex,
        *,
        make_current: bool = True,
        extra_files: Mapping[str, bytes] | None = None,
    ) -> SnapshotManifest:
        """Writes the shard as a new version, flips CURRENT to it and prunes old versions.
        `extra_files` (the canary's golden queries, say) are stored and checksummed with the
        index files."""
        if not shard.index_version:
            raise ValueError("a snapshot needs an index version")
        files = shard.to_files()
        extra = dict(extra_files or {})
        if clashes := sorted(set(extra) & (set(files) | {MANIFEST_FILE})):
            raise ValueError(f"extra snapshot files clash with the index files: {clashes}")
        files.update(extra)
        manifest = SnapshotManifest(
            index_version=shard.index_version,
            shard_id=shard.shard_id,
            num_shards=shard.num_shards,
            spec=shard.spec,
            item_count=shard.item_count,
            embedding_version=shard.embedding_version,
            built_at=shard.built_at,
            files={name: sha256(data) for name, data in files.items()},
            quantizer_id=shard.quantizer_id,
        )
        files[MANIFEST_FILE] = manifest.model_dump_json(indent=2).encode()
        self.store.write_version(shard.shard_id, shard.index_version, files)
        if make_current:
            self.store.set_current(shard.shard_id, shard.index_version)
            self.prune(shard.shard_id)
        return manifest

    def prune(self, shard_id: int) -> list[str]:
        """Deletes the oldest versions beyond `keep_versions`; never the current one."""
        current = self.store.current(shard_id)
        ordered = self.versions_newest_first(shard_id)
        removed = []
        for version in ordered[self.keep_versions :]:
            if version != current:
                self.store.delete_version(shard_id, version)
                removed.append(version)
        return removed

    # ------------------------------------------------------------------ reading

    def manifest(self, shard_id: int, version: str) -> SnapshotManifest:
        try:
            raw = self.store.read_file(shard_id, version, MANIFEST_FILE)
        except FileNotFoundError as error:
            raise SnapshotInvalid(
                f"version {version} of shard {shard_id} has no manifest"
            ) from error
        try:
            return SnapshotManifest.model_validate_json(raw)
        except ValidationError as error:
            raise SnapshotInvalid(
                f"version {version} of shard {shard_id} has an invalid manifest: {error}"
            ) from error

    def versions_newest_first(self, shard_id: int) -> list[str]:
        dated = []
        for version in self.store.list_versions(shard_id):
            try:
                built_at = self.manifest(shard_id, version).built_at
            except SnapshotInvalid:
                built_at = dt.datetime.min.replace(tzinfo=dt.UTC)
            dated.append((built_at, version))
        return [version for _, version in sorted(dated, reverse=True)]

    def verify(self, version: str, expected: Expectations) -> tuple[SnapshotManifest, ShardIndex]:
        """Loads a version and checks everything; raises SnapshotInvalid on any mismatch."""
        shard_id = expected.shard_id
        manifest = self.manifest(shard_id, version)
        problems = []
        if manifest.format_version != FORMAT_VERSION:
            problems.append(f"format version {manifest.format_version} != {FORMAT_VERSION}")
        if manifest.index_version != version:
            problems.append(f"manifest names version {manifest.index_version}")
        if manifest.shard_id != shard_id:
            problems.append(f"built for shard {manifest.shard_id}, this is shard {shard_id}")
        if manifest.num_shards != expected.num_shards:
            problems.append(
                f"built for {manifest.num_shards} shards, deployment has {expected.num_shards}"
            )
        if expected.dimension is not None and manifest.spec.dimension != expected.dimension:
            problems.append(f"dimension {manifest.spec.dimension}, expected {expected.dimension}")
        if problems:
            raise SnapshotInvalid(f"version {version} of shard {shard_id}: " + "; ".join(problems))
        if (
            expected.embedding_version is not None
            and manifest.embedding_version != expected.embedding_version
        ):
            # An intact snapshot of another release: refused here, but not quarantined.
            raise SnapshotOfAnotherRelease(
                f"version {version} of shard {shard_id}: embedding version "
                f"{manifest.embedding_version}, expected {expected.embedding_version}"
            )
        files: dict[str, bytes] = {}
        for name, digest in manifest.files.items():
            try:
                data = self.store.read_file(shard_id, version, name)
            except FileNotFoundError as error:
                raise SnapshotInvalid(f"version {version}: file {name} is missing") from error
            if sha256(data) != digest:
                raise SnapshotInvalid(f"version {version}: checksum mismatch in {name}")
            files[name] = data
        try:
            shard = ShardIndex.from_files(
                files,
                manifest.spec,
                shard_id=shard_id,
                num_shards=manifest.num_shards,
                index_version=manifest.index_version,
                embedding_version=manifest.embedding_version,
                built_at=manifest.built_at,
            )
        except (RuntimeError, ValueError, KeyError, FailedPrecondition) as error:
            raise SnapshotInvalid(f"version {version}: cannot load the index: {error}") from error
        self._check_contents(version, manifest, shard)
        return manifest, shard

    @staticmethod
    def _check_contents(version: str, manifest: SnapshotManifest, shard: ShardIndex) -> None:
        if manifest.quantizer_id is not None and shard.quantizer_id != manifest.quantizer_id:
            raise SnapshotInvalid(
                f"version {version}: the index probes quantizer {shard.quantizer_id}, the "
                f"manifest says {manifest.quantizer_id}"
            )
        if shard.item_count != manifest.item_count:
            raise SnapshotInvalid(
                f"version {version}: {shard.item_count} items, manifest says {manifest.item_count}"
            )
        ids = shard.item_ids()
        if ids.size and np.any(ids % manifest.num_shards != manifest.shard_id):
            raise SnapshotInvalid(f"version {version}: holds items of other shards")
        if shard.item_count:
            # Canary: an exhaustive probe query (every IVF list) must find something.
            probe = np.random.default_rng(0).normal(size=(1, manifest.spec.dimension))
            hits = shard.search(probe.astype(np.float32), 1, nprobe=MAX_NPROBE)
            if not hits[0].item_ids.size:
                raise SnapshotInvalid(f"version {version}: canary search found nothing")

    def current_quantizers(self, num_shards: int) -> dict[int, str | None]:
        """Shard id -> the quantizer id in its CURRENT manifest (shards without a readable
        CURRENT manifest are left out)."""
        found: dict[int, str | None] = {}
        for shard_id in range(num_shards):
            version = self.store.current(shard_id)
            if version is None:
                continue
            try:
                found[shard_id] = self.manifest(shard_id, version).quantizer_id
            except SnapshotInvalid:
                continue
        return found

    def load(self, expected: Expectations, version: str | None = None) -> ShardIndex:
        """Loads and verifies a version (default: CURRENT). A version that fails verification is
        quarantined and SnapshotInvalid raised; nothing else changes."""
        shard_id = expected.shard_id
        version = version or self.store.current(shard_id)
        if version is None:
            raise NotFound(f"shard {shard_id} has no CURRENT snapshot", reason="NO_SNAPSHOT")
        if version not in self.store.list_versions(shard_id):
            raise NotFound(
                f"shard {shard_id} has no snapshot version {version}", reason="NO_SNAPSHOT"
            )
        try:
            _, shard = self.verify(version, expected)
        except SnapshotOfAnotherRelease as error:
            logger.error(
                "snapshot refused: built from other embeddings",
                extra={"shard_id": shard_id, "index_version": version, "reason": error.message},
            )
            raise
        except SnapshotInvalid as error:
            logger.error(
                "snapshot refused and quarantined",
                extra={"shard_id": shard_id, "index_version": version, "reason": error.message},
            )
            self.store.quarantine(shard_id, version, error.message)
            raise
        return shard

    def load_last_good(self, expected: Expectations) -> ShardIndex:
        """CURRENT, or when it fails verification the newest older version that passes, which
        then becomes CURRENT (automatic rollback)."""
        shard_id = expected.shard_id
        current = self.store.current(shard_id)
        candidates = self.versions_newest_first(shard_id)
        if current in candidates:
            candidates.remove(current)
            candidates.insert(0, current)
        last_error: Exception | None = None
        for version in candidates:
            try:
                shard = self.load(expected, version)
            except SnapshotInvalid as error:
                last_error = error
                continue
            if version != current:
                logger.warning(
                    "rolled back to the last good snapshot",
                    extra={"shard_id": shard_id, "index_version": version, "refused": current},
                )
                self.store.set_current(shard_id, version)
            return shard
        if last_error is not None:
            raise last_error
        raise NotFound(f"shard {shard_id} has no snapshot", reason="NO_SNAPSHOT")

    def rollback(self, shard_id: int) -> str:
        """Points CURRENT at the version before it (by build time) and returns that version."""
        current = self.store.current(shard_id)
        ordered = self.versions_newest_first(shard_id)
        if current not in ordered:
            raise NotFound(f"shard {shard_id} has no CURRENT snapshot", reason="NO_SNAPSHOT")
        older = ordered[ordered.index(current) + 1 :]
        if not older:
            raise FailedPrecondition(
                f"shard {shard_id} has no version older than {current} to roll back to",
                reason="NO_PREVIOUS_SNAPSHOT",
            )
        self.store.set_current(shard_id, older[0])
        return older[0]
