"""The backups of a location: listing, checking every file, and retention."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from recsys.backup.errors import BackupCorrupt, BackupNotFound
from recsys.backup.location import BackupLocation
from recsys.backup.manifest import BackupManifest
from recsys.settings import BackupSettings

# A partial backup untouched this long belongs to a create that died.
STALE_PARTIAL = dt.timedelta(hours=24)


@dataclass(frozen=True)
class Listed:
    backup_id: str
    manifest: BackupManifest | None
    # Why the manifest could not be read (None when it could).
    problem: str | None


def list_backups(location: BackupLocation) -> list[Listed]:
    """Every complete backup, oldest first, with its manifest when it parses."""
    listed = []
    for backup_id in location.backup_ids():
        try:
            listed.append(Listed(backup_id, location.read_manifest(backup_id), None))
        except (BackupCorrupt, BackupNotFound) as error:
            listed.append(Listed(backup_id, None, error.message))
    return listed


def verify_backup(location: BackupLocation, backup_id: str) -> BackupManifest:
    """Reads every file of the backup and compares it with the manifest; BackupCorrupt names
    the first file that is missing or differs."""
    manifest = location.read_manifest(backup_id)
    for entry in manifest.files:
        location.check_file(backup_id, entry)
    return manifest


def created_at(backup_id: str) -> dt.datetime:
    """The creation time an id carries (to the millisecond)."""
    return dt.datetime.strptime(backup_id.split("-")[0], "%Y%m%dT%H%M%S%fZ").replace(tzinfo=dt.UTC)


def apply_retention(
    location: BackupLocation,
    settings: BackupSettings,
    *,
    protect: str,
    now: dt.datetime | None = None,
) -> list[str]:
    """Deletes the backups beyond the newest `keep` and those older than `max_age_hours`; never
    `protect` (the backup just made, known good) nor the newest backup. Returns what went."""
    moment = now or dt.datetime.now(dt.UTC)
    newest_first = list(reversed(location.backup_ids()))
    removed = []
    for position, backup_id in enumerate(newest_first):
        if backup_id == protect or position == 0:
            continue
        too_many = settings.keep is not None and position >= settings.keep
        too_old = settings.max_age_hours is not None and moment - created_at(
            backup_id
        ) > dt.timedelta(hours=settings.max_age_hours)
        if too_many or too_old:
            location.delete(backup_id)
            removed.append(backup_id)
    removed += location.remove_stale_partials(STALE_PARTIAL)
    return removed
