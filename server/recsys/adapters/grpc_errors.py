"""The one translation of errors from the gRPC services recsys calls (shard replicas, the
Retrieve and Rank services, the inference server) into the platform's `RecsysError`.

The rule: **an outage of the dependency degrades; a refusal of our request surfaces.**
An outage becomes `Unavailable` or `DeadlineExceeded`, the two errors callers fall back on and
circuit breakers count. A refusal means the request we built, or the deployment we run in, is
wrong: it stays an `InvalidArgument` or `FailedPrecondition` so that it reaches the logs and the
error metrics instead of hiding behind a fallback answer. Callers that expect one refusal during
normal operation, the `EMBEDDING_VERSION_MISMATCH` reason of a rollout in progress, recognise it
by its reason.

=================== ==================== ===================================================
Dependency's code   Raised here          Why
=================== ==================== ===================================================
UNAVAILABLE         Unavailable          down, restarting or unreachable: outage
DEADLINE_EXCEEDED   DeadlineExceeded     too slow for our deadline: outage
RESOURCE_EXHAUSTED  Unavailable          the dependency is overloaded, not our caller's quota
ABORTED             Unavailable          a transient conflict inside the dependency
CANCELLED           Unavailable          the dependency cancelled the call (shutting down)
INTERNAL            Unavailable          the dependency is broken; nothing our caller can fix
UNKNOWN             Unavailable          an unhandled error in the dependency, or no status
DATA_LOSS           Unavailable          the dependency's storage is damaged
OK                  Unavailable          a failed call that claims success: as UNKNOWN
INVALID_ARGUMENT    InvalidArgument      we sent a malformed request: our bug
OUT_OF_RANGE        InvalidArgument      we sent a value outside the accepted range
FAILED_PRECONDITION FailedPrecondition   wrong state or version; reason kept, so callers
                                         can degrade on EMBEDDING_VERSION_MISMATCH only
NOT_FOUND           FailedPrecondition   the model we are configured for is not there
UNIMPLEMENTED       FailedPrecondition   the method we call is not there (version skew)
ALREADY_EXISTS      FailedPrecondition   a create we should not have sent
PERMISSION_DENIED   FailedPrecondition   our own credentials for the dependency are wrong
UNAUTHENTICATED     FailedPrecondition
=================== ==================== ===================================================

NOT_FOUND, UNIMPLEMENTED, PERMISSION_DENIED and UNAUTHENTICATED are not passed on as they are:
our own server would answer them to its caller, who is not the one missing a model or a
credential. The reason keeps what the dependency said: its `google.rpc.ErrorInfo` reason and
metadata when it sent a `google.rpc.Status` (a recsys server always does), else the name of its
status code; `BadRequest` field violations become those of the `InvalidArgument`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from typing import TypeVar

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from recsys.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    RecsysError,
    Unavailable,
)

T = TypeVar("T")

# The table of the module docstring; a code missing here (none today) counts as an outage.
RULE: Mapping[grpc.StatusCode, type[RecsysError]] = {
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Unavailable,
    grpc.StatusCode.ABORTED: Unavailable,
    grpc.StatusCode.CANCELLED: Unavailable,
    grpc.StatusCode.INTERNAL: Unavailable,
    grpc.StatusCode.UNKNOWN: Unavailable,
    grpc.StatusCode.DATA_LOSS: Unavailable,
    grpc.StatusCode.OK: Unavailable,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.NOT_FOUND: FailedPrecondition,
    grpc.StatusCode.UNIMPLEMENTED: FailedPrecondition,
    grpc.StatusCode.ALREADY_EXISTS: FailedPrecondition,
    grpc.StatusCode.PERMISSION_DENIED: FailedPrecondition,
    grpc.StatusCode.UNAUTHENTICATED: FailedPrecondition,
}


def translate(error: grpc.RpcError, what: str) -> RecsysError:
    """The RecsysError for a failed call to `what` ("rank service", "shard replica HOST:PORT"),
    by the rule of this module; takes grpc.aio.AioRpcError and the blocking API's errors."""
    code = error.code()
    return translate_status(
        code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN,
        error.details() or "",
        what,
        status=_rich_status(error),
    )


def translate_status(
    code: grpc.StatusCode,
    message: str,
    what: str,
    *,
    status: status_pb2.Status | None = None,
) -> RecsysError:
    """`translate` for clients that hand over only the parts of the failed call (tritonclient
    keeps the code and the message)."""
    reason = code.name
    metadata: dict[str, str] = {}
    violations: list[FieldViolation] = []
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason or reason
            metadata = dict(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            violations.extend(
                FieldViolation(v.field, v.description) for v in bad_request.field_violations
            )
    # When this error is answered in turn, the interceptor writes our request id over
    # `request_id`; the dependency's stays readable for correlating the two logs.
    if "request_id" in metadata:
        metadata["dependency_request_id"] = metadata.pop("request_id")
    text = f"{what} answered {code.name}: {message}"
    kind = RULE.get(code, Unavailable)
    if issubclass(kind, InvalidArgument):
        return InvalidArgument(
            violations or [FieldViolation("request", message or code.name)],
            message=text,
            reason=reason,
            metadata=metadata,
        )
    return kind(text, reason=reason, metadata=metadata)


async def call(what: str, rpc: Awaitable[T]) -> T:
    """Awaits a gRPC call to `what`; its failure is raised as `translate` makes it."""
    try:
        return await rpc
    except grpc.RpcError as error:
        raise translate(error, what) from error


def _rich_status(error: grpc.RpcError) -> status_pb2.Status | None:
    """The google.rpc.Status of the `grpc-status-details-bin` trailer, if the call has one."""
    try:
        status: status_pb2.Status | None = rpc_status.from_call(error)
    except (ValueError, DecodeError):
        # A trailer that contradicts the call's code or message (rewritten by a proxy) or
        # does not parse: the call's own code and message still hold.
        return None
    return status
