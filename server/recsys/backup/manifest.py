"""`manifest.json` of a backup: every file with its SHA-256 and size, the versions it holds, the
counts a restore must match, the newest interaction (RPO) and the quality baseline."""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1
# Backup ids sort like their creation times (to the millisecond): 20261129T101500250Z-3fa2.
ID_PATTERN = r"^\d{8}T\d{9}Z-[0-9a-f]{4}$"
CHUNK = 1 << 20


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FileEntry(_Frozen):
    # Relative to the backup's root, with "/" separators.
    path: str
    sha256: str
    size: int


class Versions(_Frozen):
    # "<model name>:<version>", as Recommend answers report it.
    model_version: str | None = None
    embedding_version: str | None = None
    index_version: str | None = None
    release_id: str | None = None


class Counts(_Frozen):
    items: int
    # Users with a profile that is not an erasure marker.
    users: int
    interactions: int
    # Feature store: users with an embedding, users exported, items with features.
    user_embeddings: int
    feature_users: int
    item_features: int
    # Items over the CURRENT snapshot of every shard.
    index_items: int


class QualityBaseline(_Frozen):
    """NDCG@k of retrieval for these users, relevance their interactions (recsys.backup.quality)."""

    k: int
    ndcg: float
    users: list[str]


class Deployment(_Frozen):
    """What the data was served with: the non-secret settings a restored deployment needs."""

    num_shards: int
    # The index.spec section as settings take it.
    index_spec: dict[str, Any]
    model_name: str
    small_model_name: str
    feature_store: str
    database_backend: str
    schema_revision: str | None
    # Sections of settings to carry into the restored settings file (recommend, candidates...).
    settings: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # Which optional parts the backup holds.
    has_release: bool = False
    neighbours_file: str | None = None


class BackupManifest(_Frozen):
    format_version: int = FORMAT_VERSION
    backup_id: str = Field(pattern=ID_PATTERN)
    created_at: dt.datetime
    seconds: float
    deployment: Deployment
    versions: Versions
    counts: Counts
    # Rows per table of the SQL dump.
    tables: dict[str, int]
    # The newest interaction's event time (what the RPO is measured from); None: no interactions.
    newest_interaction_at: dt.datetime | None
    quality: QualityBaseline | None = None
    # Snapshot versions left out (failed verification), users of the store not exported...
    notes: list[str] = Field(default_factory=list)
    files: list[FileEntry]

    @property
    def size(self) -> int:
        return sum(entry.size for entry in self.files)

    def entry(self, path: str) -> FileEntry | None:
        return next((entry for entry in self.files if entry.path == path), None)


def new_backup_id(now: dt.datetime) -> str:
    moment = now.astimezone(dt.UTC)
    milliseconds = moment.microsecond // 1000
    return f"{moment:%Y%m%dT%H%M%S}{milliseconds:03d}Z-{secrets.token_hex(2)}"


def file_digest(path: Path) -> tuple[str, int]:
    """SHA-256 and size of a local file, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def entries_of(root: Path, paths: Iterable[Path]) -> list[FileEntry]:
    entries = []
    for path in sorted(paths):
        digest, size = file_digest(path)
        entries.append(FileEntry(path=path.relative_to(root).as_posix(), sha256=digest, size=size))
    return entries
