"""RecsysClientError from a failed call's parts: the google.rpc.Status details are read with
grpc_status, and details that contradict the call are not trusted."""

from __future__ import annotations

import grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2

from recsys_client import FieldViolation, RecsysClientError

DETAILS_KEY = "grpc-status-details-bin"


def status_with_details(code: grpc.StatusCode, message: str) -> status_pb2.Status:
    status = status_pb2.Status(code=code.value[0], message=message)
    status.details.add().Pack(
        error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field="limit", description="too big")
            ]
        )
    )
    status.details.add().Pack(
        error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=2, nanos=500_000_000))
    )
    status.details.add().Pack(
        error_details_pb2.ErrorInfo(
            reason="INVALID_ARGUMENT", domain="recsys.v1", metadata={"request_id": "r-1"}
        )
    )
    return status


def test_details_and_request_id_are_read() -> None:
    status = status_with_details(grpc.StatusCode.INVALID_ARGUMENT, "bad request")
    error = RecsysClientError.from_rpc_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        "bad request",
        ((DETAILS_KEY, status.SerializeToString()), ("x-request-id", "r-1")),
    )
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert error.message == "bad request"
    assert error.field_violations == [FieldViolation("limit", "too big")]
    assert error.retry_after_seconds == 2.5
    assert (error.reason, error.domain, error.request_id) == (
        "INVALID_ARGUMENT",
        "recsys.v1",
        "r-1",
    )
    assert error.metadata == {"request_id": "r-1"}


def test_details_that_contradict_the_call_are_not_trusted() -> None:
    status = status_with_details(grpc.StatusCode.INVALID_ARGUMENT, "bad request")
    for code, message in [
        (grpc.StatusCode.UNAVAILABLE, "bad request"),
        (grpc.StatusCode.INVALID_ARGUMENT, "another message"),
    ]:
        error = RecsysClientError.from_rpc_error(
            code, message, ((DETAILS_KEY, status.SerializeToString()),)
        )
        assert (error.code, error.message) == (code, message)
        assert (error.field_violations, error.reason) == ([], "")


def test_a_call_without_details_keeps_code_and_message() -> None:
    error = RecsysClientError.from_rpc_error(grpc.StatusCode.UNAVAILABLE, "down", None)
    assert str(error) == "UNAVAILABLE: down"
    garbled = RecsysClientError.from_rpc_error(
        grpc.StatusCode.UNAVAILABLE, "down", ((DETAILS_KEY, b"\xff\x00"),)
    )
    assert garbled.reason == ""
