"""The one error hierarchy of the platform.

Every error the platform raises on purpose is a `RecsysError` carrying a canonical status code
(the numbering of `google.rpc.Code`, shared by gRPC). The gRPC error interceptor turns it into a
`google.rpc.Status` with `BadRequest`, `ErrorInfo` and `RetryInfo` details; anything else is
logged with its traceback and becomes INTERNAL with a generic message. This module imports no
gRPC code, so the domain layer can raise these errors freely.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

ERROR_DOMAIN = "recsys.v1"


class StatusCode(enum.IntEnum):
    """Canonical status codes (google.rpc.Code); equal to gRPC's numeric codes."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


# A field path's indexes (`events[3]`) and anything that is not a name.
_LAST_NAME = re.compile(r"\[\d*\]|[^A-Za-z0-9_]")


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One invalid field: `field` is a path such as `context.country` or `events[3].user_id`.
    `reason` is machine-readable; without one it is derived from the field's last name:
    `USER_ID_REQUIRED` for a missing value, else `USER_ID_INVALID`."""

    field: str
    description: str
    reason: str = ""

    @property
    def cause(self) -> str:
        if self.reason:
            return self.reason
        name = _LAST_NAME.sub("", self.field.rsplit(".", 1)[-1]).upper() or "REQUEST"
        return f"{name}_REQUIRED" if self.description == "is required" else f"{name}_INVALID"


class RecsysError(Exception):
    """Base of every deliberate platform error.

    `reason` is a stable UPPER_SNAKE_CASE identifier for machines (ErrorInfo.reason);
    `message` is for humans and must not leak internals.
    """

    code: StatusCode = StatusCode.UNKNOWN
    default_reason: str = "UNKNOWN"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata: dict[str, str] = dict(metadata or {})

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


class InvalidArgument(RecsysError):
    """The request is malformed; `violations` names every bad field."""

    code = StatusCode.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"

    def __init__(
        self,
        violations: Sequence[FieldViolation],
        *,
        message: str | None = None,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        if not violations:
            raise ValueError("InvalidArgument needs at least one field violation")
        self.violations: tuple[FieldViolation, ...] = tuple(violations)
        summary = "; ".join(f"{v.field}: {v.description}" for v in self.violations)
        # ErrorInfo.reason names the first problem (USER_ID_INVALID, LIMIT_INVALID...); every
        # violation carries its own in BadRequest.
        super().__init__(
            message or f"invalid request: {summary}",
            reason=reason or self.violations[0].cause,
            metadata=metadata,
        )


class NotFound(RecsysError):
    code = StatusCode.NOT_FOUND
    default_reason = "NOT_FOUND"


class FailedPrecondition(RecsysError):
    code = StatusCode.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"


class ResourceExhausted(RecsysError):
    """A quota or rate limit is exceeded; `retry_after_seconds` tells when to try again."""

    code = StatusCode.RESOURCE_EXHAUSTED
    default_reason = "RESOURCE_EXHAUSTED"

    def __init__(
        self,
        message: str,
        *,
        retry_after_seconds: float,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.retry_after_seconds = retry_after_seconds


class Unauthenticated(RecsysError):
    code = StatusCode.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"


class PermissionDenied(RecsysError):
    code = StatusCode.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"


class Unavailable(RecsysError):
    code = StatusCode.UNAVAILABLE
    default_reason = "UNAVAILABLE"


class DeadlineExceeded(RecsysError):
    code = StatusCode.DEADLINE_EXCEEDED
    default_reason = "DEADLINE_EXCEEDED"


class Unimplemented(RecsysError):
    code = StatusCode.UNIMPLEMENTED
    default_reason = "UNIMPLEMENTED"


class ConfigurationError(RecsysError):
    """Settings or artifacts that make a process unable to start; raised at startup."""

    code = StatusCode.FAILED_PRECONDITION
    default_reason = "CONFIGURATION_ERROR"
