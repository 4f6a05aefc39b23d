"""The one exception type of the client: keeps the gRPC status code and the error details."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

REQUEST_ID_KEY = "x-request-id"

Metadata = Sequence[tuple[str, str | bytes]]


class FailedCall(Protocol):
    """What a failed call offers: grpc.RpcError of the blocking API, grpc.aio.AioRpcError."""

    def code(self) -> grpc.StatusCode: ...

    def details(self) -> str | None: ...

    def trailing_metadata(self) -> Metadata | None: ...


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
    def from_call(cls, call: FailedCall) -> RecsysClientError:
        """The error of a failed call, with the google.rpc.Status details (BadRequest,
        ErrorInfo, RetryInfo) of its trailers and the server's request id."""
        error = cls(code=call.code(), message=call.details() or "")
        for key, value in call.trailing_metadata() or ():
            if key == REQUEST_ID_KEY and isinstance(value, str):
                error.request_id = value
        try:
            status = rpc_status.from_call(call)
        except (ValueError, DecodeError):
            # Details that contradict the call's code or message (rewritten on the way) or do
            # not parse: the call's own code and message still hold.
            status = None
        if status is not None:
            error._read_details(status)
        return error

    @classmethod
    def from_rpc_error(
        cls,
        code: grpc.StatusCode,
        message: str,
        trailing_metadata: Metadata | None,
    ) -> RecsysClientError:
        """`from_call` for the parts of a failed call."""
        return cls.from_call(_Finished(code, message, tuple(trailing_metadata or ())))

    def _read_details(self, status: status_pb2.Status) -> None:
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


@dataclass(frozen=True)
class _Finished:
    """A failed call rebuilt from its parts, as `rpc_status.from_call` reads one."""

    status_code: grpc.StatusCode
    message: str
    trailers: Metadata

    def code(self) -> grpc.StatusCode:
        return self.status_code

    def details(self) -> str:
        return self.message

    def trailing_metadata(self) -> Metadata:
        return self.trailers
