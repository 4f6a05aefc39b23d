"""Health (overall, per service, liveness, readiness) and reflection on a real server."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from recsys import services
from recsys.grpc_server.app import GrpcApplication
from tests.conftest import make_settings


@pytest.fixture
async def embedded_app(tmp_path: Path) -> GrpcApplication:
    application = await services.build_application(make_settings(tmp_path), ["embedded"])
    await application.start()
    yield application
    await application.shutdown()


async def _status(channel: grpc.aio.Channel, service: str) -> str:
    response = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=2
    )
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


async def test_every_health_name_is_serving(embedded_app: GrpcApplication) -> None:
    async with grpc.aio.insecure_channel(embedded_app.address) as channel:
        names = [
            "",
            "liveness",
            "readiness",
            "recsys.v1.RecommendService",
            "recsys.v1.IngestService",
        ]
        assert {name: await _status(channel, name) for name in names} == dict.fromkeys(
            names, "SERVING"
        )


async def test_unknown_health_name_is_not_found(embedded_app: GrpcApplication) -> None:
    async with grpc.aio.insecure_channel(embedded_app.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _status(channel, "recsys.v1.NoSuchService")
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND


async def test_reflection_lists_every_hosted_service(embedded_app: GrpcApplication) -> None:
    async with grpc.aio.insecure_channel(embedded_app.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        responses = [response async for response in stub.ServerReflectionInfo(iter([request]))]
        listed = {service.name for service in responses[0].list_services_response.service}
        assert listed == {
            "recsys.v1.RecommendService",
            "recsys.v1.IngestService",
            "recsys.v1.RetrieveService",
            "recsys.v1.RankService",
            "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection",
            "grpc.reflection.v1.ServerReflection",
        }
        # Describe works too (grpcurl describe): the file defining RecommendService resolves.
        describe = reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="recsys.v1.RecommendService"
        )
        responses = [response async for response in stub.ServerReflectionInfo(iter([describe]))]
        files = responses[0].file_descriptor_response.file_descriptor_proto
        assert files, responses[0]
        # Only what the process hosts: the shard service (whose client the embedded Retrieve
        # imports) and the files of other protos in the process are not described.
        for request in (
            reflection_pb2.ServerReflectionRequest(
                file_containing_symbol="recsys.v1.IndexShardService"
            ),
            reflection_pb2.ServerReflectionRequest(
                file_containing_symbol="recsys.v1.SearchRequest"
            ),
            reflection_pb2.ServerReflectionRequest(
                file_by_filename="recsys/v1/index_shard_service.proto"
            ),
        ):
            (response,) = [r async for r in stub.ServerReflectionInfo(iter([request]))]
            assert response.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


async def test_reflection_describes_the_shard_service_where_it_is_hosted(tmp_path: Path) -> None:
    application = await services.build_application(make_settings(tmp_path), ["shard"])
    await application.start()
    try:
        async with grpc.aio.insecure_channel(application.address) as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            request = reflection_pb2.ServerReflectionRequest(
                file_containing_symbol="recsys.v1.IndexShardService"
            )
            (response,) = [r async for r in stub.ServerReflectionInfo(iter([request]))]
            assert response.file_descriptor_response.file_descriptor_proto
            listing = reflection_pb2.ServerReflectionRequest(list_services="")
            (response,) = [r async for r in stub.ServerReflectionInfo(iter([listing]))]
            listed = {service.name for service in response.list_services_response.service}
            assert "recsys.v1.RecommendService" not in listed
            assert "recsys.v1.IndexShardService" in listed
    finally:
        await application.shutdown()


async def test_reflection_can_be_disabled(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, server={"reflection": False})
    application = await services.build_application(settings, ["ingest"])
    await application.start()
    try:
        async with grpc.aio.insecure_channel(application.address) as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                _ = [response async for response in stub.ServerReflectionInfo(iter([request]))]
            assert caught.value.code() is grpc.StatusCode.UNIMPLEMENTED
    finally:
        await application.shutdown()


async def test_port_in_use_is_a_configuration_error(
    embedded_app: GrpcApplication, tmp_path: Path
) -> None:
    from recsys.errors import ConfigurationError

    settings = make_settings(tmp_path, server={"port": embedded_app.port})
    second = GrpcApplication(settings, [])
    with pytest.raises(ConfigurationError, match="cannot listen"):
        await second.start()
    await second.shutdown()


async def test_reflection_v1_answers_like_v1alpha(embedded_app: GrpcApplication) -> None:
    # grpc.reflection.v1's messages are v1alpha's, field for field: the same bytes answer.
    async with grpc.aio.insecure_channel(embedded_app.address) as channel:
        call = channel.stream_stream(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        responses = [response async for response in call(iter([request]))]
    listed = {service.name for service in responses[0].list_services_response.service}
    assert {"recsys.v1.RecommendService", "grpc.reflection.v1.ServerReflection"} <= listed


async def test_open_watch_streams_do_not_hold_the_shutdown(tmp_path: Path) -> None:
    import asyncio
    import time

    settings = make_settings(
        tmp_path, server={"shutdown_drain_seconds": 0.2, "shutdown_grace_seconds": 10.0}
    )
    application = await services.build_application(settings, ["ingest"])
    await application.start()
    channel = grpc.aio.insecure_channel(application.address)
    stub = health_pb2_grpc.HealthStub(channel)
    watches = [
        stub.Watch(health_pb2.HealthCheckRequest(service=name)) for name in ("", "readiness")
    ]
    seen: list[list[str]] = [[], []]

    async def follow(position: int) -> None:
        async for response in watches[position]:
            seen[position].append(
                health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
            )

    followers = [asyncio.create_task(follow(position)) for position in range(2)]
    await asyncio.sleep(0.3)
    started = time.monotonic()
    await application.shutdown()
    elapsed = time.monotonic() - started
    await asyncio.wait_for(asyncio.gather(*followers, return_exceptions=True), 5)
    await channel.close()
    assert elapsed < 0.2 + 1.0, elapsed  # drain + 1 s, not the 10 s grace
    for statuses in seen:
        assert statuses[0] == "SERVING"
        assert statuses[-1] == "NOT_SERVING"  # told before the stream ended


async def test_health_list_names_every_status(embedded_app: GrpcApplication) -> None:
    from recsys.grpc_server.health import list_messages

    request_type, response_type = list_messages()
    async with grpc.aio.insecure_channel(embedded_app.address) as channel:
        call = channel.unary_unary(
            "/grpc.health.v1.Health/List",
            request_serializer=request_type.SerializeToString,
            response_deserializer=response_type.FromString,
        )
        response = await call(request_type(), timeout=2)
    statuses = {
        name: health_pb2.HealthCheckResponse.ServingStatus.Name(value.status)
        for name, value in response.statuses.items()
    }
    for name in ("", "liveness", "readiness", "recsys.v1.RecommendService"):
        assert statuses[name] == "SERVING", statuses
