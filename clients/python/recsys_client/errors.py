"""The one exception type of the client: keeps the gRPC status code and the error details."""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
from google.rpc import error_details_pb2, status_pb2

STATUS_DETAILS_KEY = "grpc-status-details-bin"
REQUEST_ID_KEY = "x-request-id"


@dataclass(frozen=True)
class FieldViolation:
    """One invalid request field, e.g. `limit` or `events[2].user_id`."""

    field: str
    description: str


@dataclass
class RecsysClientError(Exception):
    """A failed call: status code, message and the server's structured details."""

    code: grpc.StatusCode
    message: str
    field_violations: list[FieldViolation] = field(default_factory=list)
    reason: str = ""
    domain: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    retry_after_seconds: float | None = None
    request_id: str = ""

    def __str__(self) -> str:
        text = f"{self.code.name}: {self.message}"
        if self.field_violations:
            text += " [" + "; ".join(f"{v.field}: {v.description}" for v in self.field_violations)
            text += "]"
        return text

    @classmethod
    def from_rpc_error(
        cls,
        code: grpc.StatusCode,
        message: str,
        trailing_metadata: tuple[tuple[str, str | bytes], ...] | None,
    ) -> RecsysClientError:
        error = cls(code=code, message=message or "")
        for key, value in trailing_metadata or ():
            if key == REQUEST_ID_KEY and isinstance(value, str):
                error.request_id = value
            elif key == STATUS_DETAILS_KEY and isinstance(value, bytes):
                error._read_details(value)
        return error

    def _read_details(self, serialized: bytes) -> None:
        status = status_pb2.Status.FromString(serialized)
        if status.message:
            self.message = status.message
        for detail in status.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad_request = error_details_pb2.BadRequest()
                detail.Unpack(bad_request)
                self.field_violations.extend(
                    FieldViolation(v.field, v.description) for v in bad_request.field_violations
                )
            elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                self.reason, self.domain = info.reason, info.domain
                self.metadata = dict(info.metadata)
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                self.retry_after_seconds = retry.retry_delay.ToMilliseconds() / 1000
