"""Health while the index loads, on a real `recsys serve retrieve` process with embedded shards:
every liveness check after the port opens is answered within 100 ms (a 1 s liveness probe never
fails during loading), and readiness stays NOT_SERVING until every shard has loaded.

1,000,000 items of dimension 64 in 10 flat shards (256 MB of index): about 3 s to build and
under 1 s to load on a 2-core machine; the whole test takes about 10 s."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from recsys.adapters.snapshots.local import LocalSnapshotStore
from recsys.data.synthetic import clustered_embeddings
from recsys.deploy.ports import free_port
from recsys.index.builder import build_shard_snapshots
from recsys.index.embeddings_file import ItemEmbeddings
from recsys.index.snapshots import SnapshotManager
from recsys.index.spec import IndexSpec, IndexType
from tests.conftest import drain_stderr

pytestmark = pytest.mark.integration

ITEMS = 1_000_000
NUM_SHARDS = 10
DIMENSION = 64
CHECK_DEADLINE_SECONDS = 0.1
POLL_SECONDS = 0.05
RECSYS = str(Path(sys.executable).with_name("recsys"))
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _build(snapshots: Path) -> None:
    data = clustered_embeddings(ITEMS, DIMENSION)
    build_shard_snapshots(
        ItemEmbeddings(data.item_ids, data.vectors, "emb-load-test"),
        IndexSpec(dimension=DIMENSION, index_type=IndexType.FLAT),
        num_shards=NUM_SHARDS,
        index_version="idx-load-test",
        snapshots=SnapshotManager(LocalSnapshotStore(snapshots)),
    )


def _wait_for_port(process: subprocess.Popen[str], port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.05).close()
            return
        except OSError:
            assert process.poll() is None, "the server exited before listening"
            time.sleep(0.01)
    raise AssertionError(f"port {port} did not open within {timeout} s")


def _swapped_in(lines: list[str]) -> int:
    return sum("index swapped in" in line for line in list(lines))


def test_liveness_answers_within_100ms_while_the_index_loads(tmp_path: Path) -> None:
    snapshots = tmp_path / "snapshots"
    _build(snapshots)
    port = free_port()
    environment = {
        **os.environ,
        "RECSYS_INDEX__SNAPSHOT_DIR": str(snapshots),
        "RECSYS_INDEX__NUM_SHARDS": str(NUM_SHARDS),
        "RECSYS_INDEX__SPEC__DIMENSION": str(DIMENSION),
        "RECSYS_INDEX__SPEC__INDEX_TYPE": "flat",
        "RECSYS_INDEX__SNAPSHOT_POLL_SECONDS": "0",
        "RECSYS_METRICS__ENABLED": "false",
        "RECSYS_LOGGING__ACCESS_LOG": "false",
        "RECSYS_SERVER__SHUTDOWN_DRAIN_SECONDS": "0",
    }
    process = subprocess.Popen(
        [RECSYS, "serve", "retrieve", "--host", "127.0.0.1", "--port", str(port)],
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
    )
    channel: grpc.Channel | None = None
    try:
        reader = drain_stderr(process)
        log: list[str] = reader.lines  # type: ignore[attr-defined]
        _wait_for_port(process, port)
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        health = health_pb2_grpc.HealthStub(channel)
        # Only the connect may take longer than a check; every check has 100 ms.
        grpc.channel_ready_future(channel).result(timeout=5)

        late: list[str] = []
        readiness_seen: list[int] = []
        loaded_when_not_serving: list[int] = []
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            started = time.monotonic()
            try:
                liveness = health.Check(
                    health_pb2.HealthCheckRequest(service="liveness"),
                    timeout=CHECK_DEADLINE_SECONDS,
                )
                assert liveness.status == SERVING
            except grpc.RpcError as error:
                late.append(f"liveness at {started:.3f}: {error.code().name}")
            try:
                readiness = health.Check(
                    health_pb2.HealthCheckRequest(service="readiness"),
                    timeout=CHECK_DEADLINE_SECONDS,
                ).status
            except grpc.RpcError as error:
                late.append(f"readiness at {started:.3f}: {error.code().name}")
                continue
            readiness_seen.append(readiness)
            if readiness == SERVING:
                break
            assert readiness == NOT_SERVING
            loaded_when_not_serving.append(_swapped_in(log))
            time.sleep(max(0.0, POLL_SECONDS - (time.monotonic() - started)))

        assert not late, late
        assert readiness_seen[-1] == SERVING, "readiness never turned SERVING"
        # Loading (several hundred ms) starts after the port opens: readiness was seen first
        # NOT_SERVING, and SERVING only once every shard had swapped its snapshot in.
        assert readiness_seen[0] == NOT_SERVING
        assert loaded_when_not_serving[0] < NUM_SHARDS
        assert _swapped_in(log) == NUM_SHARDS
        assert (
            health.Check(health_pb2.HealthCheckRequest(service="liveness"), timeout=1).status
            == SERVING
        )
    finally:
        if channel is not None:
            channel.close()
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
