"""RecsysInterceptor: the whole chain as one grpc.aio interceptor, layers bound once per method."""

from __future__ import annotations

import string
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
from google.protobuf import wrappers_pb2
from prometheus_client import CollectorRegistry

from recsys.grpc_server import interceptors
from recsys.grpc_server.admission import AdmissionController, CallerLimits
from recsys.grpc_server.interceptors import (
    AdmissionInterceptor,
    Behaviour,
    CallerLimitInterceptor,
    RecsysInterceptor,
    Wrap,
    _CallInterceptor,
    current_call_state,
    server_interceptors,
)
from recsys.observability.metrics import GrpcServerMetrics
from tests.support.probe import probe_callable, probe_handler

STREAM_SERVICE = "recsys.test.Stream"


class RecordingLayer(_CallInterceptor):
    """Records the calls it wraps and how often it was bound."""

    def __init__(self, name: str, log: list[tuple[str, str, str]], *, unary_only: bool) -> None:
        self.name = name
        self.log = log
        self.unary_only = unary_only
        self.binds = 0

    def bind(self, method: str, kind: str) -> Wrap | None:
        self.binds += 1
        return super().bind(method, kind)

    async def around(
        self,
        behaviour: Behaviour,
        request: Any,
        context: grpc.aio.ServicerContext,
        method: str,
        kind: str,
    ) -> Any:
        state = current_call_state()
        # The entry runs outside every layer: the request id is known here.
        assert state is not None
        assert state.request_id
        self.log.append((self.name, method, kind))
        return await behaviour(request, context)


async def _count(request: wrappers_pb2.StringValue, context: object) -> AsyncIterator[Any]:
    for number in range(3):
        yield wrappers_pb2.StringValue(value=f"{request.value}{number}")


def _stream_handler() -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        STREAM_SERVICE,
        {
            "Count": grpc.unary_stream_rpc_method_handler(
                _count,
                request_deserializer=wrappers_pb2.StringValue.FromString,
                response_serializer=wrappers_pb2.StringValue.SerializeToString,
            )
        },
    )


Serve = Callable[[list[grpc.aio.ServerInterceptor]], Any]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    servers: list[grpc.aio.Server] = []

    async def start(chain: list[grpc.aio.ServerInterceptor]) -> str:
        server = grpc.aio.server(interceptors=chain)
        server.add_generic_rpc_handlers((probe_handler(), _stream_handler()))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        servers.append(server)
        return f"127.0.0.1:{port}"

    yield start
    for server in servers:
        await server.stop(0)


def _probe(channel: grpc.aio.Channel, name: str) -> Any:
    return probe_callable(channel, name)


async def _echo(channel: grpc.aio.Channel, value: str = "x") -> tuple[str, dict[str, Any]]:
    """The echoed value and the trailing metadata."""
    call = _probe(channel, "Echo")(wrappers_pb2.StringValue(value=value))
    response = await call
    return response.value, dict(await call.trailing_metadata())


def handled(registry: CollectorRegistry, kind: str, method: str, code: str) -> float | None:
    service, _, name = method.lstrip("/").partition("/")
    return registry.get_sample_value(
        "grpc_server_handled_total",
        {"grpc_type": kind, "grpc_service": service, "grpc_method": name, "grpc_code": code},
    )


async def test_layers_run_in_order_inside_the_entry_and_bind_once_per_method(
    serve: Serve,
) -> None:
    log: list[tuple[str, str, str]] = []
    outer = RecordingLayer("outer", log, unary_only=False)
    inner = RecordingLayer("inner", log, unary_only=True)
    registry = CollectorRegistry()
    metrics = GrpcServerMetrics(registry)
    address = await serve([RecsysInterceptor(metrics, access_log=False, layers=[outer, inner])])
    request_ids = set()
    async with grpc.aio.insecure_channel(address) as channel:
        for value in ("a", "b", "c"):
            echoed, trailing = await _echo(channel, value)
            assert echoed == value
            request_id = trailing["x-request-id"]
            assert len(request_id) == 32
            assert set(request_id) <= set(string.hexdigits.lower())
            request_ids.add(request_id)
        stream = channel.unary_stream(
            f"/{STREAM_SERVICE}/Count",
            request_serializer=wrappers_pb2.StringValue.SerializeToString,
            response_deserializer=wrappers_pb2.StringValue.FromString,
        )(wrappers_pb2.StringValue(value="n"))
        assert [response.value async for response in stream] == ["n0", "n1", "n2"]
        assert "x-request-id" in dict(await stream.trailing_metadata())
    echo = ("/recsys.test.Probe/Echo", "unary")
    count = (f"/{STREAM_SERVICE}/Count", "server_stream")
    # The unary-only layer leaves the stream alone.
    assert log == [("outer", *echo), ("inner", *echo)] * 3 + [("outer", *count)]
    assert (outer.binds, inner.binds) == (2, 2)
    assert len(request_ids) == 3
    assert handled(registry, "unary", echo[0], "OK") == 3
    assert handled(registry, "server_stream", count[0], "OK") == 1


async def test_codes_are_counted_apart_for_one_method(serve: Serve) -> None:
    registry = CollectorRegistry()
    metrics = GrpcServerMetrics(registry)
    address = await serve(
        server_interceptors(metrics, access_log=False, default_deadline_seconds=5.0)
    )
    fail = "/recsys.test.Probe/Fail"
    async with grpc.aio.insecure_channel(address) as channel:
        for value, code in (("invalid", "INVALID_ARGUMENT"), ("x", "UNAVAILABLE")) * 2:
            with pytest.raises(grpc.aio.AioRpcError) as failure:
                await _probe(channel, "Fail")(wrappers_pb2.StringValue(value=value))
            assert failure.value.code().name == code
        with pytest.raises(grpc.aio.AioRpcError):
            await _probe(channel, "Fail")(wrappers_pb2.StringValue(value="invalid"))
    assert handled(registry, "unary", fail, "INVALID_ARGUMENT") == 3
    assert handled(registry, "unary", fail, "UNAVAILABLE") == 2
    assert handled(registry, "unary", fail, "OK") is None
    labels = {"grpc_type": "unary", "grpc_service": "recsys.test.Probe", "grpc_method": "Fail"}
    assert registry.get_sample_value("grpc_server_started_total", labels) == 5
    assert registry.get_sample_value("grpc_server_handling_seconds_count", labels) == 5


async def test_methods_past_the_route_bound_are_served_without_being_kept(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(interceptors, "MAX_ROUTES", 0)
    log: list[tuple[str, str, str]] = []
    layer = RecordingLayer("layer", log, unary_only=False)
    registry = CollectorRegistry()
    metrics = GrpcServerMetrics(registry)
    address = await serve([RecsysInterceptor(metrics, access_log=False, layers=[layer])])
    async with grpc.aio.insecure_channel(address) as channel:
        await _echo(channel)
        await _echo(channel)
    assert layer.binds == 2  # bound again for each call
    assert len(log) == 2
    assert handled(registry, "unary", "/recsys.test.Probe/Echo", "OK") == 2


async def test_a_layer_still_works_as_an_interceptor_of_its_own(serve: Serve) -> None:
    log: list[tuple[str, str, str]] = []

    class Alone(RecordingLayer):
        async def around(
            self,
            behaviour: Behaviour,
            request: Any,
            context: grpc.aio.ServicerContext,
            method: str,
            kind: str,
        ) -> Any:
            # Alone, no entry runs before it: no call state.
            assert current_call_state() is None
            self.log.append((self.name, method, kind))
            return await behaviour(request, context)

    address = await serve([Alone("alone", log, unary_only=False)])
    async with grpc.aio.insecure_channel(address) as channel:
        echoed, trailing = await _echo(channel, "v")
    assert echoed == "v"
    assert "x-request-id" not in trailing
    assert log == [("alone", "/recsys.test.Probe/Echo", "unary")]


def test_load_shedding_applies_to_the_platform_unary_methods_only() -> None:
    admission = AdmissionInterceptor(
        AdmissionController(
            max_in_flight=1, max_queue=0, max_queue_wait_seconds=0.1, retry_after_seconds=0.1
        )
    )
    callers = CallerLimitInterceptor(
        CallerLimits(limit=1, exempt=frozenset(), max_wait_seconds=0.1, retry_after_seconds=0.1)
    )
    for layer in (admission, callers):
        assert layer.bind("/recsys.v1.RankService/Rank", "unary") is not None
        assert layer.bind("/grpc.health.v1.Health/Check", "unary") is None
        assert layer.bind("/recsys.v1.RankService/Rank", "server_stream") is None
