"""Where backups live: a folder (the default) or any fsspec URL (an object store in production).

    <location>/<backup id>/manifest.json     written last: a backup without one is incomplete
    <location>/<backup id>/<files>
    <location>/.partial-<backup id>/          a folder backup being written (renamed when done)

A backup is built in a local staging folder and then published: a folder location renames the
staging folder (inside the location, so on its filesystem) to its id in one step; an fsspec
location uploads every file and the manifest last, so a listing never takes a half-uploaded
backup for a complete one.
"""

from __future__ import annotations

import abc
import datetime as dt
import hashlib
import importlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from pydantic import ValidationError

from recsys.backup.errors import BackupCorrupt, BackupError, BackupNotFound
from recsys.backup.manifest import CHUNK, ID_PATTERN, MANIFEST_FILE, BackupManifest, FileEntry
from recsys.errors import ConfigurationError

PARTIAL_PREFIX = ".partial-"
_ID = re.compile(ID_PATTERN)


class BackupLocation(abc.ABC):
    """The backups of one location; ids are listed oldest first (they sort by creation time)."""

    description: str

    @abc.abstractmethod
    def backup_ids(self) -> list[str]:
        """Complete backups (their manifest is there), oldest first."""

    @abc.abstractmethod
    def open_file(self, backup_id: str, path: str) -> IO[bytes]:
        """A file of a backup, for reading (FileNotFoundError when absent)."""

    @abc.abstractmethod
    def staging_parent(self) -> Path | None:
        """Where to build a backup before publishing it (None: a temporary folder)."""

    @abc.abstractmethod
    def publish(self, staging: Path, backup_id: str) -> None:
        """Makes the staged backup (manifest included) the complete backup `backup_id`."""

    @abc.abstractmethod
    def delete(self, backup_id: str) -> None: ...

    def remove_stale_partials(self, older_than: dt.timedelta) -> list[str]:
        """Leftovers of creates that died; nothing for locations without any."""
        return []

    def read_manifest(self, backup_id: str) -> BackupManifest:
        try:
            with self.open_file(backup_id, MANIFEST_FILE) as handle:
                raw = handle.read()
        except FileNotFoundError as error:
            raise BackupNotFound(
                f"no backup {backup_id} in {self.description}", metadata={"backup_id": backup_id}
            ) from error
        try:
            return BackupManifest.model_validate_json(raw)
        except ValidationError as error:
            first = error.errors(include_url=False)[0]
            where = ".".join(str(part) for part in first["loc"]) or "manifest"
            raise BackupCorrupt(backup_id, MANIFEST_FILE, f"{where}: {first['msg']}") from None

    def resolve(self, backup_id: str | None) -> str:
        """`latest` (or None) is the newest complete backup."""
        ids = self.backup_ids()
        if backup_id in (None, "latest"):
            if not ids:
                raise BackupNotFound(f"no backup in {self.description}")
            return ids[-1]
        if backup_id not in ids:
            raise BackupNotFound(
                f"no backup {backup_id} in {self.description}", metadata={"backup_id": backup_id}
            )
        return backup_id

    def check_file(self, backup_id: str, entry: FileEntry, destination: Path | None = None) -> None:
        """Reads one file (copying it to `destination` when given) and compares its size and
        SHA-256 with the manifest's; BackupCorrupt names the file that differs."""
        digest = hashlib.sha256()
        size = 0
        try:
            with self.open_file(backup_id, entry.path) as source, _sink(destination) as sink:
                while chunk := source.read(CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                    if sink is not None:
                        sink.write(chunk)
        except FileNotFoundError:
            raise BackupCorrupt(backup_id, entry.path, "missing") from None
        if size != entry.size:
            raise BackupCorrupt(
                backup_id, entry.path, f"{size} bytes, the manifest says {entry.size}"
            )
        if digest.hexdigest() != entry.sha256:
            raise BackupCorrupt(backup_id, entry.path, "SHA-256 differs from the manifest")


@contextmanager
def _sink(destination: Path | None) -> Iterator[IO[bytes] | None]:
    if destination is None:
        yield None
        return
    destination.parent.mkdir(parents=True, exist_ok=True)
    with open(destination, "wb") as handle:
        yield handle


class FolderLocation(BackupLocation):
    def __init__(self, root: Path) -> None:
        self.root = root
        self.description = str(root)

    def backup_ids(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            path.name
            for path in self.root.iterdir()
            if _ID.fullmatch(path.name) and (path / MANIFEST_FILE).is_file()
        )

    def open_file(self, backup_id: str, path: str) -> IO[bytes]:
        return open(self.root / backup_id / path, "rb")

    def staging_parent(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        return self.root

    def publish(self, staging: Path, backup_id: str) -> None:
        _fsync_tree(staging)
        target = self.root / backup_id
        if target.exists():
            raise BackupError(f"backup {backup_id} exists in {self.description}")
        os.rename(staging, target)
        _fsync_directory(self.root)

    def delete(self, backup_id: str) -> None:
        # Renamed away first: a half-deleted backup must not look complete meanwhile.
        doomed = self.root / f"{PARTIAL_PREFIX}deleting-{backup_id}"
        os.rename(self.root / backup_id, doomed)
        shutil.rmtree(doomed)

    def remove_stale_partials(self, older_than: dt.timedelta) -> list[str]:
        if not self.root.is_dir():
            return []
        cutoff = dt.datetime.now(dt.UTC).timestamp() - older_than.total_seconds()
        removed = []
        for path in self.root.iterdir():
            if path.name.startswith(PARTIAL_PREFIX) and path.stat().st_mtime < cutoff:
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path.name)
        return removed


def _fsync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _fsync_tree(root: Path) -> None:
    """Every file and folder of the staged backup on disk before the rename publishes it."""
    for folder, _, names in os.walk(root):
        for name in names:
            descriptor = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
        _fsync_directory(Path(folder))


class FsspecLocation(BackupLocation):
    """Any fsspec filesystem: s3://, gs://, abfs://, memory:// (tests)..."""

    def __init__(self, url: str) -> None:
        try:
            fsspec = importlib.import_module("fsspec")
        except ImportError as error:
            raise ConfigurationError(
                f"backup location {url} is a URL: install fsspec (and the package of its "
                "filesystem, e.g. s3fs for s3://)"
            ) from error
        try:
            self.fs, self.root = fsspec.core.url_to_fs(url)
        except (ImportError, ValueError) as error:
            raise ConfigurationError(f"backup location {url}: {error}") from error
        self.root = self.root.rstrip("/")
        self.description = url

    def _path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def backup_ids(self) -> list[str]:
        try:
            names = [
                str(name).rstrip("/").rsplit("/", 1)[-1]
                for name in self.fs.ls(self.root, detail=False)
            ]
        except FileNotFoundError:
            return []
        return sorted(
            name
            for name in names
            if _ID.fullmatch(name) and self.fs.exists(self._path(name, MANIFEST_FILE))
        )

    def open_file(self, backup_id: str, path: str) -> IO[bytes]:
        handle: Any = self.fs.open(self._path(backup_id, path), "rb")
        return handle  # type: ignore[no-any-return]

    def staging_parent(self) -> None:
        return None

    def publish(self, staging: Path, backup_id: str) -> None:
        if self.fs.exists(self._path(backup_id, MANIFEST_FILE)):
            raise BackupError(f"backup {backup_id} exists in {self.description}")
        files = sorted(path for path in staging.rglob("*") if path.is_file())
        for path in files:
            relative = path.relative_to(staging).as_posix()
            if relative != MANIFEST_FILE:
                self._upload(path, self._path(backup_id, relative))
        # Last: a backup is listed once its manifest is there.
        self._upload(staging / MANIFEST_FILE, self._path(backup_id, MANIFEST_FILE))

    def _upload(self, source: Path, target: str) -> None:
        self.fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        with open(source, "rb") as reader, self.fs.open(target, "wb") as writer:
            shutil.copyfileobj(reader, writer, CHUNK)

    def delete(self, backup_id: str) -> None:
        # The manifest first: what is left of a half-deleted backup is not listed.
        self.fs.rm(self._path(backup_id, MANIFEST_FILE))
        self.fs.rm(self._path(backup_id), recursive=True)


def open_location(location: str) -> BackupLocation:
    """A folder path (or file://...) or an fsspec URL."""
    if location.startswith("file://"):
        return FolderLocation(Path(location.removeprefix("file://")))
    if "://" in location:
        return FsspecLocation(location)
    return FolderLocation(Path(location))


@contextmanager
def staging_folder(location: BackupLocation, backup_id: str) -> Iterator[Path]:
    """A fresh local folder to build the backup in; removed unless it was published (renamed)."""
    parent = location.staging_parent()
    if parent is not None:
        folder = parent / f"{PARTIAL_PREFIX}{backup_id}"
        folder.mkdir()
    else:
        folder = Path(tempfile.mkdtemp(prefix="recsys-backup-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
