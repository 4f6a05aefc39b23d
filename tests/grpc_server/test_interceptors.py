"""Interceptors on a real server: request ids, error mapping, deadlines, metrics, access logs."""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.request
from pathlib import Path

import grpc
import pytest
from google.protobuf import wrappers_pb2
from google.rpc import error_details_pb2, status_pb2

from recsys.grpc_server.app import GrpcApplication
from tests.conftest import StartApp, make_settings
from tests.support.probe import probe_callable, probe_handler

DETAILS_KEY = "grpc-status-details-bin"


@pytest.fixture
async def probe_app(start_app: StartApp) -> GrpcApplication:
    return await start_app(generic_handlers=[probe_handler()])


def _trailing(error: grpc.aio.AioRpcError) -> dict[str, str | bytes]:
    return dict(error.trailing_metadata() or ())


def _status_details(error: grpc.aio.AioRpcError) -> status_pb2.Status:
    return status_pb2.Status.FromString(_trailing(error)[DETAILS_KEY])


async def _call(app: GrpcApplication, method: str, value: str, **kwargs: object) -> object:
    async with grpc.aio.insecure_channel(app.address) as channel:
        return await probe_callable(channel, method)(
            wrappers_pb2.StringValue(value=value), **kwargs
        )


async def test_request_id_is_returned_when_given(probe_app: GrpcApplication) -> None:
    async with grpc.aio.insecure_channel(probe_app.address) as channel:
        call = probe_callable(channel, "Echo")(
            wrappers_pb2.StringValue(value="x"), metadata=(("x-request-id", "req-abc.123"),)
        )
        await call
        assert dict(await call.trailing_metadata())["x-request-id"] == "req-abc.123"


async def test_request_id_is_generated_when_absent_or_malformed(probe_app: GrpcApplication) -> None:
    async with grpc.aio.insecure_channel(probe_app.address) as channel:
        ids = []
        for metadata in ((), (("x-request-id", "has space"),)):
            call = probe_callable(channel, "Echo")(wrappers_pb2.StringValue(), metadata=metadata)
            await call
            ids.append(dict(await call.trailing_metadata())["x-request-id"])
    assert all(len(request_id) == 32 for request_id in ids)
    assert ids[0] != ids[1]


async def test_invalid_argument_carries_field_violations(probe_app: GrpcApplication) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _call(probe_app, "Fail", "invalid", metadata=(("x-request-id", "r1"),))
    error = caught.value
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "limit" in error.details()
    status = _status_details(error)
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    bad_request = error_details_pb2.BadRequest()
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(bad_request)
    assert status.details[1].Unpack(info)
    assert [(v.field, v.description) for v in bad_request.field_violations] == [
        ("limit", "must be between 1 and 100, got 0"),
        ("user_id", "is required"),
    ]
    assert (info.domain, info.reason, info.metadata["request_id"]) == (
        "recsys.v1",
        "LIMIT_INVALID",  # the first violation's cause
        "r1",
    )
    assert _trailing(error)["x-request-id"] == "r1"


async def test_resource_exhausted_carries_retry_info(probe_app: GrpcApplication) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _call(probe_app, "Fail", "exhausted")
    assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    retry = error_details_pb2.RetryInfo()
    assert _status_details(caught.value).details[0].Unpack(retry)
    assert retry.retry_delay.ToMilliseconds() == 12_500


async def test_domain_error_keeps_its_code_reason_and_metadata(probe_app: GrpcApplication) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _call(probe_app, "Fail", "unavailable")
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    info = error_details_pb2.ErrorInfo()
    assert _status_details(caught.value).details[0].Unpack(info)
    assert info.reason == "DEPENDENCY_DOWN"
    assert info.metadata["dependency"] == "redis"


async def test_unexpected_exception_is_internal_generic_and_logged(
    probe_app: GrpcApplication, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.ERROR, logger="recsys.grpc_server.interceptors"),
        pytest.raises(grpc.aio.AioRpcError) as caught,
    ):
        await _call(probe_app, "Crash", "xyz", metadata=(("x-request-id", "crash-1"),))
    error = caught.value
    assert error.code() is grpc.StatusCode.INTERNAL
    assert "secret" not in error.details()
    assert "crash-1" in error.details()
    records = [record for record in caplog.records if record.exc_info]
    assert records, "the traceback must be logged"
    assert "secret internal detail xyz" in str(records[0].exc_info[1])


async def test_default_deadline_applies_when_the_caller_sends_none(
    start_app: StartApp, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, server={"default_deadline_ms": 200})
    app = await start_app(generic_handlers=[probe_handler()], app_settings=settings)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _call(app, "Sleep", "2")
    assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert "200 ms" in caught.value.details()


async def test_remaining_time_follows_the_caller_deadline(probe_app: GrpcApplication) -> None:
    with_deadline = await _call(probe_app, "Remaining", "", timeout=0.5)
    without = await _call(probe_app, "Remaining", "")
    # gRPC sends the time left as a grpc-timeout header rounded up to its unit, so the server
    # may see a hair more than the caller set.
    assert 0.3 < float(with_deadline.value) <= 0.5 + 0.005
    # No caller deadline: the server default (1000 ms in the test settings).
    assert 0.8 < float(without.value) <= 1.0


async def test_metrics_count_calls_by_code_with_latency(
    start_app: StartApp, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, metrics={"enabled": True})
    probe_app = await start_app(generic_handlers=[probe_handler()], app_settings=settings)
    await _call(probe_app, "Echo", "a")
    await _call(probe_app, "Echo", "b")
    with pytest.raises(grpc.aio.AioRpcError):
        await _call(probe_app, "Fail", "invalid")
    assert probe_app.metrics_endpoint is not None
    url = f"http://127.0.0.1:{probe_app.metrics_endpoint.port}/metrics"
    body = (await asyncio.to_thread(urllib.request.urlopen, url, timeout=5)).read().decode()
    labels = 'grpc_method="Echo",grpc_service="recsys.test.Probe",grpc_type="unary"'
    assert f'grpc_server_handled_total{{grpc_code="OK",{labels}}} 2.0' in body
    failed = 'grpc_code="INVALID_ARGUMENT",grpc_method="Fail"'
    assert f"grpc_server_handled_total{{{failed}" in body
    assert f"grpc_server_handling_seconds_count{{{labels}}} 2.0" in body


async def test_access_log_line_per_call(
    probe_app: GrpcApplication, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="recsys.access"):
        await _call(probe_app, "Echo", "a", metadata=(("x-request-id", "log-1"),))
    records = [record for record in caplog.records if record.name == "recsys.access"]
    assert len(records) == 1
    record = records[0]
    assert record.grpc_method == "/recsys.test.Probe/Echo"
    assert record.grpc_code == "OK"
    assert record.duration_ms >= 0


def test_json_log_lines_carry_the_request_id() -> None:
    from recsys.observability.logging import JsonFormatter, reset_request_id, set_request_id

    record = logging.LogRecord("recsys.x", logging.INFO, __file__, 1, "hello %s", ("w",), None)
    record.grpc_code = "OK"
    token = set_request_id("rid-7")
    try:
        line = json.loads(JsonFormatter().format(record))
    finally:
        reset_request_id(token)
    assert line["message"] == "hello w"
    assert line["request_id"] == "rid-7"
    assert line["grpc_code"] == "OK"
    assert line["level"] == "INFO"
