"""`server.event_loop`: the serving process's loop (`run_event_loop`, what `recsys serve` runs
on). On uvloop the embedded server starts and answers health and Recommend over gRPC."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
import uvloop
from grpc_health.v1 import health_pb2, health_pb2_grpc

from recsys import services
from recsys.grpc_server.app import run_event_loop
from recsys.settings import RecsysSettings
from recsys_client import AsyncRecsysClient, ClientOptions
from tests.conftest import make_settings


async def _serve_once(settings: RecsysSettings) -> tuple[str, str]:
    """The loop's type and the readiness status, after a Recommend call answered (an empty
    catalogue: popularity finds nothing, so no items; an error would raise)."""
    application = await services.build_application(settings, ["embedded"])
    await application.start()
    try:
        async with grpc.aio.insecure_channel(application.address) as channel:
            health = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="readiness"), timeout=10
            )
        options = ClientOptions(target=application.address, timeout_seconds=10, retry=None)
        async with AsyncRecsysClient(options) as client:
            await client.recommend("user-1", limit=5)
    finally:
        await application.shutdown()
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(health.status)
    return type(asyncio.get_running_loop()).__name__, status


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_the_embedded_server_serves_on_the_configured_loop(tmp_path: Path, loop: str) -> None:
    settings = make_settings(tmp_path, server={"event_loop": loop})
    loop_type, status = run_event_loop(_serve_once(settings), settings.server.event_loop)
    expected = uvloop.Loop.__name__ if loop == "uvloop" else "_UnixSelectorEventLoop"
    assert (loop_type, status) == (expected, "SERVING")


def test_uvloop_is_the_default() -> None:
    assert RecsysSettings().server.event_loop == "uvloop"
