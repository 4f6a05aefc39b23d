"""At-least-once with idempotent effects, proven the hard way: 100,000 unique events produced
while the consumer process is SIGKILLed five times and a second member joins and leaves the
group (two rebalances). Every event id is stored exactly once in SQL, lag returns to 0, and
the item counters equal a recount from the SQL rows."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from confluent_kafka import Producer
from sqlalchemy import text

from recsys.adapters.redis.counters import RedisItemCounters
from recsys.deploy.ports import free_port
from recsys.domain.interactions import Interaction, InteractionKind
from recsys.domain.popularity import recount
from recsys.events.codec import encode_interaction
from recsys.metadata.database import create_migration_engine
from recsys.metadata.migrate import upgrade
from recsys.ports.counters import Counter
from recsys.settings import DatabaseSettings, RecsysSettings, load_settings
from tests.support.kafka import Broker, kafka_settings
from tests.support.services import require_postgres, require_redis

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

EVENTS = 100_000
USERS = 2_000
ITEMS = 500
KILLS = 5
KINDS = [InteractionKind.VIEW, InteractionKind.CLICK, InteractionKind.LIKE,
         InteractionKind.ADD_TO_CART, InteractionKind.PURCHASE, InteractionKind.RATE,
         InteractionKind.SKIP]  # fmt: skip
RECSYS = str(Path(sys.executable).with_name("recsys"))


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(value)


def write_config(path: Path, sections: dict[str, dict[str, Any]], top: dict[str, Any]) -> None:
    lines = [f"{key} = {toml_value(value)}" for key, value in top.items()]
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines.extend(f"{key} = {toml_value(value)}" for key, value in values.items())
    path.write_text("\n".join(lines) + "\n")


def events(started: dt.datetime) -> Iterator[Interaction]:
    for index in range(EVENTS):
        yield Interaction(
            f"crash-{index:06d}",
            f"user-{index % USERS}",
            (index * 7919) % ITEMS,
            KINDS[index % len(KINDS)],
            float(index % 5),
            # Spread over the last 50 minutes: some inside the recent window, all decaying.
            started - dt.timedelta(milliseconds=(EVENTS - index) * 30),
        )


class Member:
    """One `recsys serve consume` process."""

    def __init__(self, config: Path, log: Path) -> None:
        self.metrics_port = free_port()
        environment = {**os.environ, "RECSYS_CONFIG_FILE": str(config)}
        self.log = log.open("ab")
        self.process = subprocess.Popen(
            [RECSYS, "serve", "consume", "--port", "0", "--metrics-port", str(self.metrics_port)],
            env=environment, stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)
        self.log.close()

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            assert self.process.wait(30) == 0
        finally:
            if self.process.poll() is None:
                self.process.kill()
            self.log.close()

    def total_lag(self) -> float | None:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2
            ) as response:
                body = response.read().decode()
        except OSError:
            return None
        lags = [float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
                if line.startswith("recsys_consumer_lag{")]  # fmt: skip
        return sum(lags) if lags else None


@pytest.fixture
def settings(tmp_path: Path, broker: Broker) -> Iterator[RecsysSettings]:
    redis_url, postgres = require_redis(), require_postgres()
    namespace = f"test-{uuid.uuid4().hex[:12]}"
    schema = f"test_{uuid.uuid4().hex[:12]}"
    sections = kafka_settings(
        broker, kafka={"partitions": 8}, consumer={"lag_interval_seconds": 0.2}
    )
    sections.update(
        redis={"url": redis_url, "namespace": namespace, "socket_timeout_ms": 2000},
        database={"url": postgres, "schema_name": schema},
        features={"store": "redis"},
        recommend={"cache": "redis"},
        realtime={"counters": "redis"},
        metrics={"enabled": True, "host": "127.0.0.1"},
        logging={"access_log": False},
        server={"shutdown_drain_seconds": 0.0},
    )
    settings = load_settings(mode="distributed", **sections)
    upgrade(settings.database)
    write_config(tmp_path / "consume.toml", sections, {"mode": "distributed"})
    try:
        yield settings
    finally:
        client = redis.Redis.from_url(redis_url)
        keys = list(client.scan_iter(match=f"{namespace}:*", count=10_000))
        for start in range(0, len(keys), 10_000):
            client.delete(*keys[start : start + 10_000])
        client.close()
        engine = create_migration_engine(DatabaseSettings(url=postgres))
        with engine.begin() as connection:
            connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        engine.dispose()


def stored_rows(settings: RecsysSettings) -> tuple[int, int]:
    engine = create_migration_engine(settings.database)
    try:
        with engine.connect() as connection:
            total, distinct = connection.execute(
                text("SELECT count(*), count(DISTINCT event_id) FROM interactions")
            ).one()
    finally:
        engine.dispose()
    return int(total), int(distinct)


# The last events wait until every kill and rebalance happened, so that all of them land while
# events are still arriving, however fast the consumer is.
HELD_BACK = 20_000


def produce_all(
    broker: Broker,
    topic: str,
    started: dt.datetime,
    release: threading.Event,
    done: threading.Event,
) -> None:
    producer = Producer({"bootstrap.servers": broker.bootstrap_servers, "acks": "all",
                         "enable.idempotence": True, "linger.ms": 20})  # fmt: skip
    for index, event in enumerate(events(started)):
        if index == EVENTS - HELD_BACK:
            producer.flush(60)
            assert release.wait(300)
        while True:
            try:
                producer.produce(topic, key=event.user_id.encode(), value=encode_interaction(event))
                break
            except BufferError:
                producer.poll(0.05)
        if index % 1000 == 0:
            producer.poll(0)
            time.sleep(0.1)
    assert producer.flush(60) == 0
    done.set()


def wait_for_progress(settings: RecsysSettings, beyond: int, within: float) -> int:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        stored, _ = stored_rows(settings)
        if stored >= beyond:
            return stored
        time.sleep(0.2)
    raise AssertionError(f"the consumer stored no more than {beyond} rows in {within} s")


def test_kills_and_rebalances_lose_and_duplicate_nothing(
    tmp_path: Path, broker: Broker, settings: RecsysSettings
) -> None:
    config = tmp_path / "consume.toml"
    started = dt.datetime.now(dt.UTC)
    produced, release = threading.Event(), threading.Event()
    producer = threading.Thread(
        target=produce_all,
        args=(broker, settings.kafka.interactions_topic, started, release, produced),
        daemon=True,
    )
    member = Member(config, tmp_path / "member-0.log")
    members = [member]
    producer.start()
    stored = 0
    try:
        for kill in range(KILLS):
            # Each member makes progress, then dies without committing what it stored last.
            stored = wait_for_progress(settings, stored + 1_000, within=90)
            member.kill()
            member = Member(config, tmp_path / f"member-{kill + 1}.log")
            members.append(member)
            if kill == 1:
                # A second member joins (rebalance), works a while, then leaves (rebalance).
                second = Member(config, tmp_path / "second.log")
                members.append(second)
                stored = wait_for_progress(settings, stored + 1_000, within=90)
                second.stop()
        assert stored < EVENTS - HELD_BACK
        release.set()
        producer.join(120)
        assert produced.is_set()
        wait_for_progress(settings, EVENTS, within=180)
        deadline = time.monotonic() + 30
        while (lag := member.total_lag()) != 0:
            assert time.monotonic() < deadline, f"lag stayed {lag}"
            time.sleep(0.2)
        member.stop()
    finally:
        release.set()
        for each in members:
            if each.process.poll() is None:
                each.process.kill()
                each.process.wait(10)
    assert stored_rows(settings) == (EVENTS, EVENTS)
    asyncio.run(check_counters(settings, started))


async def check_counters(settings: RecsysSettings, started: dt.datetime) -> None:
    expected_events = list(events(started))
    counters = RedisItemCounters.from_settings(settings)
    now = dt.datetime.now(dt.UTC)
    try:
        for counter, half_life in (
            (Counter.POPULARITY, settings.realtime.popularity_half_life_hours * 3600),
            (Counter.TRENDING, settings.realtime.trending_half_life_minutes * 60),
        ):
            expected = recount(expected_events, half_life, now)
            stored = await counters.values(counter, sorted(expected), now=now)
            for item, value in expected.items():
                assert stored[item] == pytest.approx(value, rel=1e-9), (counter, item)
    finally:
        await counters.close()
