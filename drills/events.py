"""Drills on the write path: the layout's consumer (`consume`) is SIGKILLed five times while a
burst of 100,000 interaction events arrives on the layout's broker, and a poison event lands
in the middle of a partition."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time
import uuid
from collections.abc import Iterator

from drills.core import timed
from drills.platform import Platform, say
from drills.report import DrillResult

EVENTS = 100_000
USERS = 2_000
KILLS = 5


def _database(platform: Platform):  # type: ignore[no-untyped-def]
    from recsys.settings import DatabaseSettings

    database = platform.settings["database"]
    return DatabaseSettings(url=database["url"], schema_name=database.get("schema_name", ""))


def _stored(platform: Platform, prefix: str) -> tuple[int, int]:
    from sqlalchemy import text

    from recsys.metadata.database import create_migration_engine

    engine = create_migration_engine(_database(platform))
    try:
        with engine.connect() as connection:
            total, distinct = connection.execute(
                text(
                    "SELECT count(*), count(DISTINCT event_id) FROM interactions "
                    "WHERE event_id LIKE :prefix"
                ),
                {"prefix": f"{prefix}%"},
            ).one()
    finally:
        engine.dispose()
    return int(total), int(distinct)


def _events(prefix: str, started: dt.datetime, items: int) -> Iterator[object]:
    from recsys.domain.interactions import Interaction, InteractionKind

    kinds = [InteractionKind.VIEW, InteractionKind.CLICK, InteractionKind.LIKE,
             InteractionKind.ADD_TO_CART, InteractionKind.PURCHASE]  # fmt: skip
    for index in range(EVENTS):
        yield Interaction(
            f"{prefix}{index:06d}",
            f"drill-user-{index % USERS}",
            (index * 7919) % items,
            kinds[index % len(kinds)],
            0.0,
            started - dt.timedelta(milliseconds=(EVENTS - index) * 30),
        )


def _topic(platform: Platform, name: str) -> str:
    value: str = getattr(platform.recsys_settings().kafka, name)
    return value


def consumer_kills(platform: Platform) -> DrillResult:
    def run(result: DrillResult) -> None:
        from confluent_kafka import Producer

        from recsys.events.codec import encode_interaction

        prefix = f"drill-{uuid.uuid4().hex[:8]}-"
        started = dt.datetime.now(dt.UTC)
        items = platform.catalogue.items
        topic = _topic(platform, "interactions_topic")
        done = threading.Event()
        failures: list[str] = []

        def produce() -> None:
            producer = Producer({"bootstrap.servers": platform.broker_address, "acks": "all",
                                 "enable.idempotence": True, "linger.ms": 20})  # fmt: skip
            try:
                for index, event in enumerate(_events(prefix, started, items)):
                    while True:
                        try:
                            producer.produce(
                                topic, key=event.user_id.encode(),  # type: ignore[attr-defined]
                                value=encode_interaction(event),  # type: ignore[arg-type]
                            )  # fmt: skip
                            break
                        except BufferError:
                            producer.poll(0.05)
                    if index % 1000 == 0:
                        producer.poll(0)
                        time.sleep(0.05)  # a burst spread over ~5 s, so the kills land in it
                left = producer.flush(120)
                if left:
                    failures.append(f"{left} events not acknowledged by the broker")
            except Exception as error:  # reported by the drill
                failures.append(repr(error))
            finally:
                done.set()

        clock = time.monotonic()
        thread = threading.Thread(target=produce, daemon=True)
        thread.start()
        kills: list[dict[str, object]] = []
        stored = 0
        for kill in range(KILLS):
            # Each consumer makes progress, then dies without committing what it stored last.
            target = stored + 1_000
            waited = platform.wait_for(
                lambda target=target: _stored(platform, prefix)[0] >= target, 120, 0.2
            )
            if waited is None:
                raise RuntimeError(f"the consumer stored no more than {stored} events")
            stored = _stored(platform, prefix)[0]
            pid = platform.kill_child("consume")
            kills.append({"kill": kill + 1, "at s": round(time.monotonic() - clock, 1),
                          "stored when killed": stored})  # fmt: skip
            say(f"  consumer killed ({kill + 1}/{KILLS}) at {stored} stored")
            platform.wait_child("consume", other_than=pid, timeout=60)
        done.wait(300)
        thread.join(10)
        complete = platform.wait_for(lambda: _stored(platform, prefix)[0] >= EVENTS, 300, 1.0)
        took = time.monotonic() - clock
        total, distinct = _stored(platform, prefix)
        result.tables.append(("Kills", kills))
        result.check(
            f"the producer had every event acknowledged ({failures or 'no failure'})", not failures
        )
        result.check(
            f"{KILLS} SIGKILLs landed while the burst was being consumed (the last at "
            f"{kills[-1]['stored when killed']} of {EVENTS} stored)",
            len(kills) == KILLS and int(kills[-1]["stored when killed"]) < EVENTS,  # type: ignore[call-overload]
        )
        result.check(f"events lost: {EVENTS - distinct}; aim 0", distinct == EVENTS)
        result.check(
            f"SQL rows: {total} for {distinct} events (event_id is unique)", total == distinct
        )
        counters_ok, detail = asyncio.run(_counters_match(platform, prefix, started, items))
        # The effect a redelivery would double: each kill leaves uncommitted events that the
        # next consumer applies again, and only the counters' per-event markers keep them once.
        result.check(
            f"duplicated effects: item counters equal a recount of the events, each once "
            f"({detail})",
            counters_ok,
        )
        result.notes.append(
            f"{EVENTS} events produced straight to the layout's broker (topic {topic}); all "
            f"stored {took:.0f} s after the burst began"
            + ("" if complete is not None else " (not within the wait)")
        )
        result.time_to_recover_s = round(took, 1)
        result.client_errors = len(failures)

    return timed(
        "SIGKILL the consumer 5 times during 100,000 events",
        "0 lost, 0 duplicated effects",
        run,
    )


async def _counters_match(
    platform: Platform, prefix: str, started: dt.datetime, items: int
) -> tuple[bool, str]:
    """The Redis item counters against a recount of this drill's events. Other writers (the
    load never writes events) would only add: the drill's items must match exactly."""
    from recsys.adapters.redis.counters import RedisItemCounters
    from recsys.domain.popularity import recount
    from recsys.ports.counters import Counter
    from recsys.settings import load_settings

    settings = load_settings(config_file=platform.config)
    expected_events = list(_events(prefix, started, items))
    counters = RedisItemCounters.from_settings(settings)
    now = dt.datetime.now(dt.UTC)
    try:
        mismatches = 0
        checked = 0
        for counter, half_life in (
            (Counter.POPULARITY, settings.realtime.popularity_half_life_hours * 3600),
            (Counter.TRENDING, settings.realtime.trending_half_life_minutes * 60),
        ):
            expected = recount(expected_events, half_life, now)  # type: ignore[arg-type]
            stored = await counters.values(counter, sorted(expected), now=now)
            for item, value in expected.items():
                checked += 1
                if abs(stored[item] - value) > 1e-9 * max(1.0, abs(value)):
                    mismatches += 1
    finally:
        await counters.close()
    return mismatches == 0, f"{checked - mismatches} of {checked} item counters match"


def poison_event(platform: Platform) -> DrillResult:
    def run(result: DrillResult) -> None:
        from confluent_kafka import Consumer, Producer

        from recsys.domain.interactions import Interaction, InteractionKind
        from recsys.events.codec import encode_interaction

        topic = _topic(platform, "interactions_topic")
        dead_letters = _topic(platform, "dead_letter_topic")
        marker = uuid.uuid4().hex[:8]
        key = f"drill-poison-{marker}".encode()
        poison = f"not an interaction {marker}".encode()
        after = Interaction(
            f"drill-poison-{marker}-after", key.decode(), 1, InteractionKind.CLICK, 0.0,
            dt.datetime.now(dt.UTC),
        )  # fmt: skip
        producer = Producer({"bootstrap.servers": platform.broker_address, "acks": "all"})
        clock = time.monotonic()
        # Same key: the same partition, the poison first.
        producer.produce(topic, key=key, value=poison)
        producer.produce(topic, key=key, value=encode_interaction(after))
        left = producer.flush(30)
        result.check(f"both events acknowledged by the broker ({left} left)", left == 0)
        flowed = platform.wait_for(
            lambda: _stored(platform, f"drill-poison-{marker}-after")[0] == 1, 60, 0.2
        )
        result.check(
            "the event behind the poison in its partition was applied "
            + (f"{flowed:.1f} s after producing" if flowed is not None else "- not within 60 s"),
            flowed is not None,
        )
        consumer = Consumer({
            "bootstrap.servers": platform.broker_address, "group.id": f"drill-dlq-{marker}",
            "auto.offset.reset": "earliest", "enable.auto.commit": False,
        })  # fmt: skip
        consumer.subscribe([dead_letters])
        found = None
        deadline = time.monotonic() + 30
        try:
            while found is None and time.monotonic() < deadline:
                message = consumer.poll(0.5)
                if message is None or message.error():
                    continue
                if message.value() == poison:
                    found = message
        finally:
            consumer.close()
        headers = dict(found.headers() or []) if found is not None else {}
        reason = {key: value.decode(errors="replace") for key, value in headers.items() if value}
        result.check(
            f"dead-lettered on {dead_letters}"
            + (f" with headers {sorted(reason)}" if found is not None else ": not found in 30 s"),
            found is not None,
        )
        result.time_to_recover_s = round(flowed, 1) if flowed is not None else None
        result.client_errors = 0 if left == 0 else left
        result.notes.append(f"took {time.monotonic() - clock:.1f} s in all")

    return timed(
        "a poison event",
        "dead-lettered; the partition keeps flowing",
        run,
    )
