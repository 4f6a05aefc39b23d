"""The one gRPC error translator: every status code by the rule (outages degrade, refusals of our
request surface), the google.rpc.Status details it keeps, and tritonclient's errors."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from tritonclient.utils import InferenceServerException

from recsys.adapters.grpc_errors import RULE, call, translate
from recsys.adapters.rankers.triton import _translate as translate_triton
from recsys.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    RecsysError,
    Unavailable,
)

DETAILS_KEY = "grpc-status-details-bin"


class FakeRpcError(grpc.RpcError):
    """A failed call as grpc.aio.AioRpcError presents one: code, details, trailers."""

    def __init__(
        self,
        code: grpc.StatusCode,
        details: str = "it failed",
        trailers: tuple[tuple[str, str | bytes], ...] = (),
    ) -> None:
        super().__init__(details)
        self._code = code
        self._details = details
        self._trailers = trailers

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._trailers


def rich(code: grpc.StatusCode, message: str, *details: object) -> FakeRpcError:
    """A failed call whose trailers carry a google.rpc.Status, as a recsys server sends it."""
    status = status_pb2.Status(code=code.value[0], message=message)
    for detail in details:
        status.details.add().Pack(detail)
    return FakeRpcError(code, message, ((DETAILS_KEY, status.SerializeToString()),))


OUTAGE, REFUSED = "degrades", "surfaces"
# The table of recsys.adapters.grpc_errors, written out again: the class, and whether callers
# degrade on it (Unavailable, DeadlineExceeded) or see it as a refusal of the request.
EXPECTED: dict[grpc.StatusCode, tuple[type[RecsysError], str]] = {
    grpc.StatusCode.OK: (Unavailable, OUTAGE),
    grpc.StatusCode.CANCELLED: (Unavailable, OUTAGE),
    grpc.StatusCode.UNKNOWN: (Unavailable, OUTAGE),
    grpc.StatusCode.INVALID_ARGUMENT: (InvalidArgument, REFUSED),
    grpc.StatusCode.DEADLINE_EXCEEDED: (DeadlineExceeded, OUTAGE),
    grpc.StatusCode.NOT_FOUND: (FailedPrecondition, REFUSED),
    grpc.StatusCode.ALREADY_EXISTS: (FailedPrecondition, REFUSED),
    grpc.StatusCode.PERMISSION_DENIED: (FailedPrecondition, REFUSED),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (Unavailable, OUTAGE),
    grpc.StatusCode.FAILED_PRECONDITION: (FailedPrecondition, REFUSED),
    grpc.StatusCode.ABORTED: (Unavailable, OUTAGE),
    grpc.StatusCode.OUT_OF_RANGE: (InvalidArgument, REFUSED),
    grpc.StatusCode.UNIMPLEMENTED: (FailedPrecondition, REFUSED),
    grpc.StatusCode.INTERNAL: (Unavailable, OUTAGE),
    grpc.StatusCode.UNAVAILABLE: (Unavailable, OUTAGE),
    grpc.StatusCode.DATA_LOSS: (Unavailable, OUTAGE),
    grpc.StatusCode.UNAUTHENTICATED: (FailedPrecondition, REFUSED),
}


def test_the_table_covers_every_status_code() -> None:
    assert set(EXPECTED) == set(grpc.StatusCode)
    assert set(RULE) == set(grpc.StatusCode)


@pytest.mark.parametrize("code", list(grpc.StatusCode), ids=lambda code: code.name)
def test_each_code_by_the_rule(code: grpc.StatusCode) -> None:
    expected, effect = EXPECTED[code]
    error = translate(FakeRpcError(code, "the details"), "rank service")
    assert type(error) is expected
    assert isinstance(error, Unavailable | DeadlineExceeded) == (effect == OUTAGE)
    # Without a google.rpc.Status the dependency's code is the reason, and both are readable.
    assert error.reason == code.name
    assert error.message == f"rank service answered {code.name}: the details"
    if isinstance(error, InvalidArgument):
        assert error.violations == (FieldViolation("request", "the details"),)


def test_error_info_reason_and_metadata_are_kept() -> None:
    info = error_details_pb2.ErrorInfo(
        reason="EMBEDDING_VERSION_MISMATCH",
        domain="recsys.v1",
        metadata={"query_embedding_version": "emb-1", "request_id": "their-id"},
    )
    error = translate(
        rich(grpc.StatusCode.FAILED_PRECONDITION, "version skew", info), "retrieve service"
    )
    assert isinstance(error, FailedPrecondition)
    assert error.reason == "EMBEDDING_VERSION_MISMATCH"
    # Our interceptor writes our request id over `request_id`; theirs stays under its own key.
    assert error.metadata == {
        "query_embedding_version": "emb-1",
        "dependency_request_id": "their-id",
    }


def test_an_outage_keeps_its_reason_too() -> None:
    info = error_details_pb2.ErrorInfo(reason="SHARDS_UNAVAILABLE", metadata={"x": "1"})
    error = translate(rich(grpc.StatusCode.UNAVAILABLE, "down", info), "retrieve service")
    assert isinstance(error, Unavailable)
    assert (error.reason, error.metadata) == ("SHARDS_UNAVAILABLE", {"x": "1"})


def test_bad_request_violations_become_those_of_invalid_argument() -> None:
    bad_request = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field="k", description="too large"),
            error_details_pb2.BadRequest.FieldViolation(field="user_id", description="required"),
        ]
    )
    info = error_details_pb2.ErrorInfo(reason="INVALID_ARGUMENT", domain="recsys.v1")
    error = translate(
        rich(grpc.StatusCode.INVALID_ARGUMENT, "bad", bad_request, info), "retrieve service"
    )
    assert isinstance(error, InvalidArgument)
    assert error.violations == (
        FieldViolation("k", "too large"),
        FieldViolation("user_id", "required"),
    )


def test_details_that_contradict_the_call_are_ignored() -> None:
    info = error_details_pb2.ErrorInfo(reason="SHOULD_NOT_BE_READ")
    status = status_pb2.Status(code=grpc.StatusCode.NOT_FOUND.value[0], message="other")
    status.details.add().Pack(info)
    contradicting = FakeRpcError(
        grpc.StatusCode.UNAVAILABLE, "down", ((DETAILS_KEY, status.SerializeToString()),)
    )
    garbled = FakeRpcError(grpc.StatusCode.UNAVAILABLE, "down", ((DETAILS_KEY, b"\xff\x00"),))
    for failed in (contradicting, garbled):
        error = translate(failed, "rank service")
        assert isinstance(error, Unavailable)
        assert error.reason == "UNAVAILABLE"


async def test_call_passes_answers_through_and_translates_failures() -> None:
    async def answer() -> str:
        return "ok"

    async def refuse() -> str:
        raise FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "k is 0")

    assert await call("rank service", answer()) == "ok"
    with pytest.raises(InvalidArgument) as caught:
        await call("rank service", refuse())
    assert caught.value.message == "rank service answered INVALID_ARGUMENT: k is 0"
    assert isinstance(caught.value.__cause__, grpc.RpcError)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("StatusCode.UNAVAILABLE", Unavailable),
        ("StatusCode.DEADLINE_EXCEEDED", DeadlineExceeded),
        ("StatusCode.INTERNAL", Unavailable),
        ("StatusCode.CANCELLED", Unavailable),
        ("StatusCode.INVALID_ARGUMENT", InvalidArgument),
        ("StatusCode.NOT_FOUND", FailedPrecondition),
        ("StatusCode.UNIMPLEMENTED", FailedPrecondition),
        ("not a status", Unavailable),
        # Raised by tritonclient over our inputs before anything was sent.
        (None, InvalidArgument),
    ],
)
def test_tritonclient_errors_follow_the_same_rule(
    status: str | None, expected: type[RecsysError]
) -> None:
    error = translate_triton(InferenceServerException("it failed", status=status), "gpu:8001")
    assert type(error) is expected
    assert error.message.startswith("inference server gpu:8001 answered ")
