"""TritonRanker against a real KServe V2 server (MLServer running the same ONNX file): parity
with ONNX Runtime, and the circuit breaker drill through the Rank RPC."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from recsys import services
from recsys.adapters.rankers.onnx import OnnxRanker
from recsys.adapters.rankers.triton import TritonRanker
from recsys.domain.circuit_breaker import BreakerState
from recsys.domain.ranking import RANKING_FEATURES
from recsys.errors import DeadlineExceeded
from recsys.grpc_server.app import GrpcApplication
from recsys.ranking.model_repository import ModelRepository
from recsys.v1 import common_pb2
from recsys_client import AsyncRecsysClient, ClientOptions
from tests.conftest import make_settings
from tests.support.mlserver import MLServerProcess, prepare

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
REPOSITORY = ROOT / "triton_models"
MODEL = REPOSITORY / "ranker" / "1" / "model.onnx"


@pytest.fixture
def mlserver(tmp_path: Path) -> Iterator[MLServerProcess]:
    server = prepare(tmp_path / "mlserver", MODEL)
    server.start()
    yield server
    server.stop()


async def test_triton_and_onnx_rankers_agree(mlserver: MLServerProcess) -> None:
    features = np.random.default_rng(3).normal(size=(2500, len(RANKING_FEATURES)))
    features = features.astype(np.float32)
    triton = TritonRanker(mlserver.url, "ranker", max_batch_size=1000)  # 3 batches
    await triton.connect()
    onnx = OnnxRanker(ModelRepository(REPOSITORY))
    onnx.load()
    try:
        remote = await triton.score(features, timeout=10)
        local = await onnx.score(features, timeout=10)
    finally:
        await triton.close()
    assert remote.shape == local.shape == (2500,)
    np.testing.assert_allclose(remote, local, rtol=0, atol=1e-5)


def settings_for(server: MLServerProcess, folder: Path, **rank: object):  # type: ignore[no-untyped-def]
    values: dict[str, object] = {
        "backend": "triton",
        "triton_url": server.url,
        "model_repository": str(REPOSITORY),
        "reload_poll_seconds": 0,
        "timeout_ms": 2000,
        "breaker_open_seconds": 1.0,
        # Deterministic probing for the test (the default lets about 10% through).
        "breaker_half_open_fraction": 1.0,
        "breaker_success_threshold": 2,
    }
    values.update(rank)
    return make_settings(folder, rank=values, logging={"access_log": False})


async def rank_once(client: AsyncRecsysClient) -> int:
    response = await client.rank("u1", [(item, 1.0 / (item + 1)) for item in range(200)])
    assert len(response.items) == 200
    return int(response.backend)


async def test_breaker_drill_kill_and_restart_the_model_server(
    mlserver: MLServerProcess, tmp_path: Path
) -> None:
    settings = settings_for(mlserver, tmp_path)
    app: GrpcApplication = await services.build_application(settings, ["rank"])
    await app.start()
    chain = app.components.ranking_chain
    try:
        async with AsyncRecsysClient(
            ClientOptions(target=app.address, timeout_seconds=10)
        ) as client:
            assert await rank_once(client) == common_pb2.RANKING_BACKEND_MODEL
            mlserver.stop(kill=True)  # the GPU cluster goes down mid-stream
            backends = [await rank_once(client) for _ in range(8)]
            # Every call succeeded through the CPU model; the breaker opened on the fifth failure.
            assert backends == [common_pb2.RANKING_BACKEND_CPU_MODEL] * 8
            assert chain.breaker.state is BreakerState.OPEN
            assert chain.model_failures == 5
            mlserver.start()
            await asyncio.sleep(1.1)  # the cool-down passes: half-open
            assert chain.breaker.state is BreakerState.HALF_OPEN
            # Probes go to the model; the channel reconnects within its capped back-off, and
            # two consecutive successes close the breaker.
            recovered: list[int] = []
            deadline = asyncio.get_running_loop().time() + 20
            while chain.breaker.state is not BreakerState.CLOSED:
                assert asyncio.get_running_loop().time() < deadline, recovered
                recovered.append(await rank_once(client))
                await asyncio.sleep(0.2)
            assert recovered[-2:] == [common_pb2.RANKING_BACKEND_MODEL] * 2
            assert await rank_once(client) == common_pb2.RANKING_BACKEND_MODEL
    finally:
        await app.shutdown()


async def test_slow_model_timeouts_count_as_failures(tmp_path: Path) -> None:
    server = prepare(tmp_path / "slow", MODEL)
    server.start(delay_seconds=0.5)
    try:
        app = await services.build_application(
            settings_for(server, tmp_path, timeout_ms=100, cpu_fallback=False), ["rank"]
        )
        await app.start()
        chain = app.components.ranking_chain
        try:
            async with AsyncRecsysClient(
                ClientOptions(target=app.address, timeout_seconds=10)
            ) as client:
                backends = [await rank_once(client) for _ in range(6)]
            assert backends == [common_pb2.RANKING_BACKEND_RULE_FALLBACK] * 6
            assert chain.breaker.state is BreakerState.OPEN
            assert chain.model_failures == 5  # timeouts counted; the sixth call skipped the model
        finally:
            await app.shutdown()
        triton = TritonRanker(server.url, "ranker")
        try:
            with pytest.raises(DeadlineExceeded):
                await triton.score(np.zeros((4, len(RANKING_FEATURES)), np.float32), timeout=0.1)
        finally:
            await triton.close()
    finally:
        server.stop()
