"""SnapshotStore: where versioned index snapshots live (bytes only; verification is not its job).

Layout per shard: versions written whole into staging and renamed into place atomically, a
CURRENT pointer flipped atomically, and a quarantine for versions that failed verification.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping


class SnapshotStore(abc.ABC):
    @abc.abstractmethod
    def write_version(self, shard_id: int, version: str, files: Mapping[str, bytes]) -> None:
        """Writes a complete version atomically; FileExistsError if the version exists."""

    @abc.abstractmethod
    def read_file(self, shard_id: int, version: str, name: str) -> bytes:
        """One file of a version; FileNotFoundError when absent."""

    @abc.abstractmethod
    def list_files(self, shard_id: int, version: str) -> list[str]:
        """Names of the files of a version."""

    @abc.abstractmethod
    def list_versions(self, shard_id: int) -> list[str]:
        """Versions of a shard, quarantined ones excluded, in no particular order."""

    @abc.abstractmethod
    def current(self, shard_id: int) -> str | None:
        """The version the CURRENT pointer names, or None."""

    @abc.abstractmethod
    def set_current(self, shard_id: int, version: str) -> None:
        """Flips the CURRENT pointer atomically; the version must exist."""

    @abc.abstractmethod
    def quarantine(self, shard_id: int, version: str, reason: str) -> None:
        """Moves a version aside (kept for investigation, never loaded again)."""

    @abc.abstractmethod
    def delete_version(self, shard_id: int, version: str) -> None:
        """Removes a version for good."""

    @abc.abstractmethod
    def shard_ids(self) -> list[int]:
        """Shards that have at least one version or pointer."""
