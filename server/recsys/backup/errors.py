"""The errors of backups and restores: each names what is wrong and where."""

from __future__ import annotations

from recsys.errors import FailedPrecondition, NotFound, RecsysError, StatusCode


class BackupError(FailedPrecondition):
    """A backup or restore cannot proceed (a source that cannot be read, a target refusing)."""

    default_reason = "BACKUP_FAILED"


class BackupNotFound(NotFound):
    default_reason = "BACKUP_NOT_FOUND"


class BackupCorrupt(RecsysError):
    """A file of a backup differs from its manifest (or is missing): nothing is restored."""

    code = StatusCode.DATA_LOSS
    default_reason = "BACKUP_CORRUPT"

    def __init__(self, backup_id: str, path: str, problem: str) -> None:
        super().__init__(
            f"backup {backup_id} is corrupt: {path}: {problem}",
            metadata={"backup_id": backup_id, "path": path},
        )
        self.path = path


class TargetNotEmpty(BackupError):
    """A restore refuses a target that holds data (unless forced)."""

    default_reason = "RESTORE_TARGET_NOT_EMPTY"
