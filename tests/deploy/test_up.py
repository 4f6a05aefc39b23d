"""`recsys up` runs the distributed layout as real processes and restarts a killed shard."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from recsys.adapters.snapshots.local import LocalSnapshotStore
from recsys.data.synthetic import clustered_embeddings
from recsys.deploy.ports import free_port_range
from recsys.deploy.supervisor import layout_offsets
from recsys.index.builder import build_shard_snapshots
from recsys.index.embeddings_file import ItemEmbeddings
from recsys.index.snapshots import SnapshotManager
from recsys.index.spec import IndexSpec, IndexType
from recsys_client import ClientOptions, RecsysClient, RecsysClientError

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RECSYS = str(Path(sys.executable).with_name("recsys"))


def free_ports(num_shards: int, recommend_replicas: int = 1) -> tuple[int, int]:
    """A base port for the layout (every server and metrics port free) and a public port."""
    offsets = layout_offsets(num_shards, recommend_replicas)
    base, (public,) = free_port_range(offsets, extra=1)
    return base, public


def serving(address: str, service: str = "readiness") -> bool:
    try:
        with grpc.insecure_channel(address) as channel:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=1
            )
        return response.status == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        return False


def wait_until(predicate, timeout: float = 90) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError("timed out waiting")


def pid_of(pattern: str) -> int | None:
    command = ["pgrep", "-f", "--", pattern]
    found = subprocess.run(command, capture_output=True, text=True).stdout.split()
    return int(found[0]) if found else None


def two_shard_layout(
    tmp_path: Path, *, items: int, clusters: int, seed: int, **settings: str
) -> tuple[Any, dict[str, str]]:
    """Two flat shard snapshots of clustered embeddings in `tmp_path`, and the environment of
    a `recsys up` serving them (SQLite metadata, the reference model): `settings` adds to it."""
    data = clustered_embeddings(items, 8, clusters=clusters, seed=seed)
    build_shard_snapshots(
        ItemEmbeddings(data.item_ids, data.vectors, "e1"),
        IndexSpec(dimension=8, index_type=IndexType.FLAT),
        num_shards=2, index_version="v1",
        snapshots=SnapshotManager(LocalSnapshotStore(tmp_path / "snapshots")),
    )  # fmt: skip
    environment = {
        **os.environ,
        "RECSYS_INDEX__NUM_SHARDS": "2",
        "RECSYS_INDEX__SPEC__DIMENSION": "8",
        "RECSYS_INDEX__SNAPSHOT_DIR": str(tmp_path / "snapshots"),
        "RECSYS_RANK__MODEL_REPOSITORY": str(ROOT / "triton_models"),
        "RECSYS_DATABASE__URL": f"sqlite+aiosqlite:///{tmp_path / 'meta.db'}",
        "RECSYS_LOGGING__ACCESS_LOG": "false",
        **settings,
    }
    return data, environment


def test_up_serves_and_restarts_a_killed_shard(tmp_path: Path) -> None:
    base, public = free_ports(2)
    data, environment = two_shard_layout(
        tmp_path, items=2_000, clusters=10, seed=1,
        RECSYS_SERVER__PORT=str(public), RECSYS_SERVER__SHUTDOWN_DRAIN_SECONDS="0",
    )  # fmt: skip
    supervisor = subprocess.Popen(
        [RECSYS, "up", "--base-port", str(base), "--log-dir", str(tmp_path / "logs")],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    shard_pattern = f"--shard-id 1 --num-shards 2 --port {base + 1} "
    try:
        wait_until(lambda: serving(f"127.0.0.1:{public}"))
        wait_until(lambda: serving(f"127.0.0.1:{base + 100}"))
        with RecsysClient(ClientOptions(target=f"127.0.0.1:{public}", timeout_seconds=10)) as c:
            assert c.recommend("newcomer", limit=5).cold_start
        first_pid = pid_of(shard_pattern)
        assert first_pid is not None
        os.kill(first_pid, signal.SIGKILL)
        wait_until(lambda: (pid_of(shard_pattern) or first_pid) != first_pid, timeout=30)
        wait_until(lambda: serving(f"127.0.0.1:{base + 1}"), timeout=60)
        retrieve = f"127.0.0.1:{base + 100}"
        with RecsysClient(ClientOptions(target=retrieve, timeout_seconds=10)) as client:
            query = np.asarray(data.queries(1)[0]).tolist()

            def whole() -> bool:
                try:
                    response = client.retrieve(query_vector=query, embedding_version="e1", k=20)
                except RecsysClientError:
                    return False  # still reconnecting or reloading
                return not response.partial and len(response.candidates) == 20

            wait_until(whole, timeout=30)
    finally:
        supervisor.send_signal(signal.SIGTERM)
        try:
            supervisor.wait(timeout=40)
        except subprocess.TimeoutExpired:
            supervisor.kill()
            supervisor.wait()
    assert supervisor.returncode == 0
    output = supervisor.stdout.read().decode() if supervisor.stdout else ""
    assert f"shard-1    127.0.0.1:{base + 1}" in output
    assert pid_of(shard_pattern) is None  # every child stopped with the supervisor


def test_a_rolling_restart_of_two_recommend_replicas_fails_no_call(tmp_path: Path) -> None:
    import threading

    base, public = free_ports(2, recommend_replicas=2)
    _, environment = two_shard_layout(
        tmp_path, items=500, clusters=5, seed=2,
        RECSYS_SERVER__PORT=str(public), RECSYS_SERVER__SHUTDOWN_DRAIN_SECONDS="0.5",
        RECSYS_METRICS__ENABLED="true",
    )  # fmt: skip
    # Migrated once up front: two replicas starting together would both migrate the file.
    subprocess.run([RECSYS, "db", "upgrade"], env=environment, check=True, capture_output=True)
    command = [RECSYS, "up", "--base-port", str(base), "--log-dir", str(tmp_path / "logs")]
    supervisor = subprocess.Popen(
        [*command, "--recommend-replicas", "2"],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    patterns = [f"--metrics-port {base + 200 + 4 + replica}" for replica in range(2)]
    outcomes: list[str] = []
    stop = threading.Event()

    def traffic() -> None:
        # The client library's defaults: retries UNAVAILABLE with back-off within the deadline.
        options = ClientOptions(target=f"127.0.0.1:{public}", timeout_seconds=5)
        with RecsysClient(options) as client:
            number = 0
            while not stop.is_set():
                number += 1
                try:
                    client.recommend(f"user{number % 50}", limit=5)
                    outcomes.append("OK")
                except RecsysClientError as error:
                    outcomes.append(error.code.name)
                time.sleep(0.01)

    try:
        wait_until(lambda: serving(f"127.0.0.1:{public}"))
        wait_until(lambda: serving(f"127.0.0.1:{base + 100}"))
        before = [pid_of(pattern) for pattern in patterns]
        assert None not in before
        callers = [threading.Thread(target=traffic) for _ in range(3)]
        for caller in callers:
            caller.start()
        time.sleep(1.0)
        supervisor.send_signal(signal.SIGHUP)

        def replaced() -> bool:
            now = [pid_of(pattern) for pattern in patterns]
            return all(pid is not None and pid not in before for pid in now)

        wait_until(replaced, timeout=90)
        time.sleep(2.0)  # the second replica has taken traffic again
        stop.set()
        for caller in callers:
            caller.join(timeout=30)
    finally:
        stop.set()
        supervisor.send_signal(signal.SIGTERM)
        try:
            supervisor.wait(timeout=40)
        except subprocess.TimeoutExpired:
            supervisor.kill()
            supervisor.wait()
    assert outcomes.count("OK") > 50
    assert [code for code in outcomes if code != "OK"] == []


def test_shard_processes_share_the_cores(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from recsys.deploy.supervisor import plan
    from tests.conftest import make_settings

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    settings = make_settings(tmp_path, index={"num_shards": 4})
    children = {child.name: child for child in plan(
        settings, base_port=40_000, config_file=None, log_dir=tmp_path
    )}  # fmt: skip
    shard = children["shard-0"].environment
    assert shard["RECSYS_INDEX__FAISS_THREADS"] == "2"  # 8 cores / 4 shards
    assert shard["OMP_WAIT_POLICY"] == "PASSIVE"
    assert "RECSYS_INDEX__FAISS_THREADS" not in children["retrieve"].environment
    # An explicit choice wins (children inherit the supervisor's environment).
    monkeypatch.setenv("RECSYS_INDEX__FAISS_THREADS", "3")
    explicit = make_settings(tmp_path, index={"num_shards": 4})
    (first, *_) = plan(explicit, base_port=40_000, config_file=None, log_dir=tmp_path)
    assert first.environment["RECSYS_INDEX__FAISS_THREADS"] == "3"


def test_every_port_of_the_layout_is_fixed_and_distinct(tmp_path: Path) -> None:
    from recsys.deploy.supervisor import DEFAULT_BASE_PORT, plan
    from tests.conftest import make_settings

    settings = make_settings(tmp_path, index={"num_shards": 10}, server={"port": 50051})
    children = plan(settings, base_port=DEFAULT_BASE_PORT, config_file=None, log_dir=tmp_path)
    ports = []
    for child in children:
        arguments = child.arguments
        ports += [
            int(arguments[arguments.index(flag) + 1]) for flag in ("--port", "--metrics-port")
        ]
    assert 0 not in ports
    assert len(set(ports)) == len(ports) == 2 * 13
    # Below the ephemeral range, where outgoing connections could take a child's port.
    layout = [port for port in ports if port != 50051]
    assert max(layout) < 32_768
    # In-memory stores: the in-process write path, neither broker nor consumer.
    assert sorted(layout) == sorted(
        DEFAULT_BASE_PORT + o for o in layout_offsets(10, write_path=False)
    )


def test_up_refuses_more_shards_than_its_port_layout_holds(tmp_path: Path) -> None:
    from recsys.deploy.supervisor import plan
    from tests.conftest import make_settings

    settings = make_settings(tmp_path, index={"num_shards": 100})
    with pytest.raises(ValueError, match="at most 99 shards"):
        plan(settings, base_port=30_100, config_file=None, log_dir=tmp_path)
