"""SnapshotStore on a local (or mounted network) filesystem.

    ROOT/shard-03/versions/<version>/<files>     complete versions
    ROOT/shard-03/CURRENT                        the version to serve
    ROOT/shard-03/staging/<version>.<random>/    versions being written
    ROOT/shard-03/quarantine/<version>.<time>/   versions that failed verification (+ REASON)

Writes go to staging, are fsynced, then renamed into `versions/` (atomic on one filesystem);
CURRENT is replaced with `os.replace`, so readers see the old or the new pointer, never half.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path

from recsys.ports.snapshots import SnapshotStore
from recsys.settings import RecsysSettings

VERSION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
FILE_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def _check_name(pattern: re.Pattern[str], kind: str, value: str) -> None:
    if not pattern.fullmatch(value):
        raise ValueError(f"invalid snapshot {kind} name {value!r}")


def _fsync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class LocalSnapshotStore(SnapshotStore):
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    @classmethod
    def from_settings(cls, settings: RecsysSettings) -> LocalSnapshotStore:
        return cls(settings.index.snapshot_dir)

    def _shard(self, shard_id: int) -> Path:
        return self.root / f"shard-{shard_id:03d}"

    def _version(self, shard_id: int, version: str) -> Path:
        _check_name(VERSION_PATTERN, "version", version)
        return self._shard(shard_id) / "versions" / version

    def write_version(self, shard_id: int, version: str, files: Mapping[str, bytes]) -> None:
        target = self._version(shard_id, version)
        if target.exists():
            raise FileExistsError(f"snapshot version {version} of shard {shard_id} exists")
        staging = self._shard(shard_id) / "staging" / f"{version}.{uuid.uuid4().hex[:8]}"
        staging.mkdir(parents=True)
        try:
            for name, data in files.items():
                _check_name(FILE_PATTERN, "file", name)
                with open(staging / name, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
            _fsync_directory(staging)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.rename(staging, target)
            _fsync_directory(target.parent)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def read_file(self, shard_id: int, version: str, name: str) -> bytes:
        _check_name(FILE_PATTERN, "file", name)
        return (self._version(shard_id, version) / name).read_bytes()

    def list_files(self, shard_id: int, version: str) -> list[str]:
        folder = self._version(shard_id, version)
        if not folder.is_dir():
            raise FileNotFoundError(f"snapshot version {version} of shard {shard_id} not found")
        return sorted(path.name for path in folder.iterdir() if path.is_file())

    def list_versions(self, shard_id: int) -> list[str]:
        folder = self._shard(shard_id) / "versions"
        if not folder.is_dir():
            return []
        return sorted(path.name for path in folder.iterdir() if path.is_dir())

    def current(self, shard_id: int) -> str | None:
        pointer = self._shard(shard_id) / "CURRENT"
        try:
            version = pointer.read_text().strip()
        except FileNotFoundError:
            return None
        return version or None

    def set_current(self, shard_id: int, version: str) -> None:
        if not self._version(shard_id, version).is_dir():
            raise FileNotFoundError(f"snapshot version {version} of shard {shard_id} not found")
        shard = self._shard(shard_id)
        temporary = shard / f".CURRENT.{uuid.uuid4().hex[:8]}"
        with open(temporary, "w") as handle:
            handle.write(version + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, shard / "CURRENT")
        _fsync_directory(shard)

    def quarantine(self, shard_id: int, version: str, reason: str) -> None:
        source = self._version(shard_id, version)
        if not source.is_dir():
            return
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
        target = self._shard(shard_id) / "quarantine" / f"{version}.{stamp}"
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(source, target)
        (target / "REASON").write_text(reason + "\n")

    def delete_version(self, shard_id: int, version: str) -> None:
        shutil.rmtree(self._version(shard_id, version), ignore_errors=True)

    def shard_ids(self) -> list[int]:
        if not self.root.is_dir():
            return []
        found = []
        for path in self.root.iterdir():
            match = re.fullmatch(r"shard-(\d+)", path.name)
            if match and path.is_dir():
                found.append(int(match.group(1)))
        return sorted(found)
