"""Release manifests: one record ties the ranking model version, the embedding version and the
index version together, so a user tower is never served against an index built from other
embeddings (seed Simulation 6). Publishing verifies the combination; rollback returns to the
previous release.

    <directory>/releases/<release_id>.json
    <directory>/CURRENT            the release to serve
"""

from __future__ import annotations

import datetime as dt
import os
import re
import uuid
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from recsys.errors import FailedPrecondition, NotFound
from recsys.index.snapshots import SnapshotInvalid, SnapshotManager
from recsys.ranking.model_repository import ModelRepository

RELEASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class ReleaseManifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    release_id: str
    # "<model name>:<version>", as RankResponse.model_version reports it.
    model_version: str
    embedding_version: str
    index_version: str
    num_shards: int
    created_at: dt.datetime


class ReleaseMismatch(FailedPrecondition):
    default_reason = "RELEASE_MISMATCH"


def verify(
    manifest: ReleaseManifest, *, snapshots: SnapshotManager, models: ModelRepository
) -> None:
    """Every shard holds the index version, built from the embedding version, and the model
    version exists with a valid schema; ReleaseMismatch names what does not fit."""
    problems = []
    for shard_id in range(manifest.num_shards):
        try:
            snapshot = snapshots.manifest(shard_id, manifest.index_version)
        except SnapshotInvalid as error:
            problems.append(f"shard {shard_id}: {error.message}")
            continue
        if snapshot.embedding_version != manifest.embedding_version:
            problems.append(
                f"shard {shard_id}: index {manifest.index_version} was built from embeddings "
                f"{snapshot.embedding_version}, the release says {manifest.embedding_version}"
            )
        if snapshot.num_shards != manifest.num_shards:
            problems.append(f"shard {shard_id}: built for {snapshot.num_shards} shards")
    name, _, version = manifest.model_version.partition(":")
    if name != models.model_name or not version:
        problems.append(f"model version must be {models.model_name}:<version>")
    else:
        try:
            models.read(version)
        except (NotFound, FailedPrecondition) as error:
            problems.append(f"model {manifest.model_version}: {error.message}")
    if problems:
        raise ReleaseMismatch("the release does not fit together: " + "; ".join(problems))


class ReleaseStore:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def _path(self, release_id: str) -> Path:
        if not RELEASE_ID.fullmatch(release_id):
            raise ValueError(f"invalid release id {release_id!r}")
        return self.directory / "releases" / f"{release_id}.json"

    def read(self, release_id: str) -> ReleaseManifest:
        try:
            return ReleaseManifest.model_validate_json(self._path(release_id).read_text())
        except FileNotFoundError as error:
            raise NotFound(f"no release {release_id}", reason="NO_RELEASE") from error

    def current(self) -> ReleaseManifest | None:
        try:
            release_id = (self.directory / "CURRENT").read_text().strip()
        except FileNotFoundError:
            return None
        return self.read(release_id) if release_id else None

    def history(self) -> list[ReleaseManifest]:
        folder = self.directory / "releases"
        if not folder.is_dir():
            return []
        releases = [self.read(path.stem) for path in folder.glob("*.json")]
        return sorted(releases, key=lambda release: release.created_at)

    def _point_at(self, release_id: str) -> None:
        temporary = self.directory / f".CURRENT.{uuid.uuid4().hex[:8]}"
        temporary.write_text(release_id + "\n")
        os.replace(temporary, self.directory / "CURRENT")

    def publish(
        self,
        manifest: ReleaseManifest,
        *,
        snapshots: SnapshotManager,
        models: ModelRepository,
    ) -> None:
        """Verifies, records and activates a release; nothing changes when it does not fit."""
        verify(manifest, snapshots=snapshots, models=models)
        path = self._path(manifest.release_id)
        if path.exists():
            raise FailedPrecondition(
                f"release {manifest.release_id} exists", reason="RELEASE_EXISTS"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(manifest.model_dump_json(indent=2))
        for shard_id in range(manifest.num_shards):
            snapshots.store.set_current(shard_id, manifest.index_version)
        self._point_at(manifest.release_id)

    def rollback(self, *, snapshots: SnapshotManager) -> ReleaseManifest:
        """Activates the release published before the current one (and its index)."""
        current = self.current()
        history = self.history()
        if current is None:
            raise NotFound("no current release", reason="NO_RELEASE")
        older = [r for r in history if r.created_at < current.created_at]
        if not older:
            raise FailedPrecondition(
                "no earlier release to roll back to", reason="NO_PREVIOUS_RELEASE"
            )
        previous = older[-1]
        for shard_id in range(previous.num_shards):
            snapshots.store.set_current(shard_id, previous.index_version)
        self._point_at(previous.release_id)
        return previous


def current_release(directory: Path | None) -> ReleaseManifest | None:
    """The release services must serve, or None when releases are not used."""
    if directory is None:
        return None
    release = ReleaseStore(directory).current()
    if release is None:
        raise NotFound(f"release.directory {directory} has no current release", reason="NO_RELEASE")
    return release
