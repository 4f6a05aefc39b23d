"""The consumer worker of the write path (`recsys serve consume`): a confluent-kafka consumer
group on the interactions and deletions topics, applying `InteractionEffects` in batches.

Delivery is at-least-once and nothing is skipped:
- an offset is stored only after its event's effects are durable (or the event is safely in
  the dead-letter topic); stored offsets are committed every second, on revoke and at close,
  so a killed worker's successor starts after the last event whose effects were stored;
- every effect is idempotent (`recsys.domain.ingestion`), so a redelivery changes nothing;
- an event that cannot be decoded or is invalid is dead-lettered at once; one whose effects
  fail for another reason is retried alone up to `consumer.max_attempts` times, then
  dead-lettered with headers (error, source topic, partition, offset, attempts), and the
  partition keeps flowing;
- while a store the effects need is down (Unavailable, DeadlineExceeded) the batch is retried
  with backoff, never dead-lettered: the outage is not the event's fault; lag grows and alerts.

Every call on the client runs on one thread (`_client_thread`): rebalance callbacks run inside
`consume`, between batches, so a revoke never races a batch's offsets."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from recsys.domain.ingestion import InteractionEffects
from recsys.domain.interactions import Interaction
from recsys.errors import DeadlineExceeded, Unavailable
from recsys.events.codec import PoisonEvent, UserDeletion, decode_deletion, decode_interaction
from recsys.events.producer import CLIENT_LOGGER, EventProducer
from recsys.observability.events import ConsumerMetrics
from recsys.settings import RecsysSettings

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Headers of a dead-lettered message.
ERROR_HEADER = "recsys-error"
TOPIC_HEADER = "recsys-source-topic"
PARTITION_HEADER = "recsys-source-partition"
OFFSET_HEADER = "recsys-source-offset"
ATTEMPTS_HEADER = "recsys-attempts"


# Refusals a store answers to one command (a script error, a key of the wrong type): not an
# outage, so they go the poison way (bounded retries, then the dead-letter topic).
EVENT_FAILURE_REASONS = frozenset({"REDIS_COMMAND_FAILED"})


def consumer_config(settings: RecsysSettings) -> dict[str, Any]:
    kafka, consumer = settings.kafka, settings.consumer
    if not kafka.bootstrap_servers:
        raise ValueError("kafka.bootstrap_servers is not set")
    return {
        "bootstrap.servers": kafka.bootstrap_servers,
        "client.id": f"{kafka.client_id}-consumer",
        "group.id": consumer.group_id,
        # Offsets are stored by this worker after the effects, committed in the background.
        "enable.auto.offset.store": False,
        "enable.auto.commit": True,
        "auto.commit.interval.ms": 1000,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": consumer.session_timeout_ms,
        "heartbeat.interval.ms": consumer.heartbeat_interval_ms,
        # A batch retried through a store outage longer than this leaves the group; its
        # partitions move and its stored offsets say where the next owner starts.
        "max.poll.interval.ms": consumer.max_poll_interval_ms,
        "socket.connection.setup.timeout.ms": kafka.request_timeout_ms,
        "logger": CLIENT_LOGGER,
    }


@dataclass
class _Batch:
    """One fetch, split by topic, with the next offset to store per partition."""

    interactions: list[tuple[Message, Interaction]] = field(default_factory=list)
    deletions: list[tuple[Message, UserDeletion]] = field(default_factory=list)
    poison: list[tuple[Message, str]] = field(default_factory=list)
    next_offsets: dict[tuple[str, int], int] = field(default_factory=dict)


class EventConsumer:
    def __init__(
        self,
        settings: RecsysSettings,
        effects: InteractionEffects,
        *,
        dead_letters: EventProducer,
        metrics: ConsumerMetrics,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        self.settings = settings
        self.effects = effects
        self.dead_letters = dead_letters
        self.metrics = metrics
        self._sleep = sleep
        self._client_thread = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="kafka-consumer"
        )
        self._consumer: Consumer | None = None
        # The next offset the group resumes from, per assigned partition (lag).
        self._positions: dict[tuple[str, int], int] = {}
        self._last_lag_export = 0.0
        self.running = False

    # ------------------------------------------------------------------ client calls

    async def _call(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._client_thread, lambda: function(*args, **kwargs))

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.metrics.rebalances.labels("assign").inc()
        for partition in partitions:
            self._positions.pop((partition.topic, partition.partition), None)
        self.metrics.assigned.set(len(consumer.assignment()) + len(partitions))
        logger.info(
            "partitions assigned",
            extra={"partitions": [f"{p.topic}[{p.partition}]" for p in partitions]},
        )

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.metrics.rebalances.labels("revoke").inc()
        try:
            # What is stored is done: commit it now, before another member takes over.
            consumer.commit(asynchronous=False)
        except KafkaException as error:
            if error.args[0].code() != KafkaError._NO_OFFSET:
                logger.warning("commit on revoke failed", extra={"error": str(error)})
        self._give_up(consumer, partitions)
        logger.info(
            "partitions revoked",
            extra={"partitions": [f"{p.topic}[{p.partition}]" for p in partitions]},
        )

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # The group moved on without us (session timed out): nothing may be committed, and
        # the partitions' lag is their new owner's to report.
        self.metrics.rebalances.labels("lost").inc()
        self._give_up(consumer, partitions)
        logger.warning(
            "partitions lost",
            extra={"partitions": [f"{p.topic}[{p.partition}]" for p in partitions]},
        )

    def _give_up(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Partitions revoked or lost: their position and lag are their next owner's."""
        for partition in partitions:
            self._positions.pop((partition.topic, partition.partition), None)
            with contextlib.suppress(KeyError):
                self.metrics.lag.remove(partition.topic, str(partition.partition))
        self.metrics.assigned.set(max(0, len(consumer.assignment()) - len(partitions)))

    # ------------------------------------------------------------------ the loop

    async def run(self) -> None:
        """Consumes until cancelled; closes the consumer (final commit) on the way out."""
        kafka = self.settings.kafka
        self._consumer = await self._call(Consumer, consumer_config(self.settings))
        consumer = self._consumer
        await self._call(
            consumer.subscribe,
            [kafka.interactions_topic, kafka.deletions_topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        self.running = True
        settings = self.settings.consumer
        try:
            while True:
                try:
                    messages = await self._call(
                        consumer.consume, settings.batch_size, settings.poll_timeout_ms / 1000
                    )
                except KafkaException as error:
                    # The client recovers from broker trouble by itself; poll again.
                    logger.warning("consume failed", extra={"error": str(error)})
                    await self._sleep(settings.poll_timeout_ms / 1000)
                    continue
                if messages:
                    await self._process(messages)
                await self._export_lag()
        finally:
            self.running = False
            await asyncio.shield(self._close())

    async def _close(self) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        self._consumer = None
        try:
            # Leaves the group and commits what was stored.
            await self._call(consumer.close)
        except (KafkaException, RuntimeError) as error:
            logger.warning("consumer close failed", extra={"error": str(error)})
        self._client_thread.shutdown(wait=True)
        logger.info("event consumer stopped")

    async def _process(self, messages: Sequence[Message]) -> None:
        batch = self._split(messages)
        started = time.perf_counter()
        if batch.poison:
            await self._dead_letter([(message, error, 1) for message, error in batch.poison])
        if batch.deletions:
            await self._apply_deletions(batch.deletions)
        if batch.interactions:
            await self._apply_interactions(batch.interactions)
        self.metrics.batch_seconds.observe(time.perf_counter() - started)
        await self._store(batch.next_offsets)

    def _split(self, messages: Sequence[Message]) -> _Batch:
        batch = _Batch()
        deletions_topic = self.settings.kafka.deletions_topic
        for message in messages:
            error = message.error()
            if error is not None:
                # Partition EOF and transient broker errors: the client recovers by itself.
                if error.code() != KafkaError._PARTITION_EOF:
                    logger.warning("consumer error", extra={"error": error.str()})
                continue
            topic, partition, offset = message.topic(), message.partition(), message.offset()
            assert topic is not None
            assert partition is not None
            assert offset is not None
            key = (topic, partition)
            batch.next_offsets[key] = max(batch.next_offsets.get(key, 0), offset + 1)
            try:
                if topic == deletions_topic:
                    batch.deletions.append((message, decode_deletion(message.value())))
                else:
                    batch.interactions.append((message, decode_interaction(message.value())))
            except PoisonEvent as poison:
                batch.poison.append((message, str(poison)))
        return batch

    async def _apply_interactions(self, items: list[tuple[Message, Interaction]]) -> None:
        topic = self.settings.kafka.interactions_topic
        events = [event for _, event in items]
        try:
            applied = await self._until_stored(lambda: self.effects.apply(events))
        except _EventFailure:
            # Something in the batch fails for a reason other than an outage: find which,
            # one event at a time; the others are applied, the failing ones dead-lettered.
            await self._apply_one_by_one(items)
            return
        now = time.time()
        for event in events:
            if event.event_time is not None:
                self.metrics.freshness_seconds.observe(max(0.0, now - event.event_time.timestamp()))
        self.metrics.events.labels(topic, "applied").inc(applied.new)
        self.metrics.events.labels(topic, "erased_user").inc(applied.erased_users)
        self.metrics.events.labels(topic, "duplicate").inc(
            len(events) - applied.new - applied.erased_users
        )

    async def _apply_one_by_one(self, items: list[tuple[Message, Interaction]]) -> None:
        failed: list[tuple[Message, str, int]] = []
        for message, event in items:
            failure = await self._attempts(functools.partial(self.effects.apply, [event]))
            if failure is not None:
                failed.append((message, *failure))
        if failed:
            await self._dead_letter(failed)

    async def _apply_deletions(self, deletions: list[tuple[Message, UserDeletion]]) -> None:
        topic = self.settings.kafka.deletions_topic
        failed: list[tuple[Message, str, int]] = []
        for message, deletion in deletions:
            failure = await self._attempts(functools.partial(self.effects.erase, deletion.user_id))
            if failure is None:
                self.metrics.events.labels(topic, "deletion").inc()
            else:
                failed.append((message, *failure))
        if failed:
            await self._dead_letter(failed)

    async def _attempts(self, effect: Callable[[], Any]) -> tuple[str, int] | None:
        """One event's effect, tried up to `consumer.max_attempts` times (outages waited out
        each time); None once it succeeds, else the last error and the attempts made."""
        settings = self.settings.consumer
        attempts = 0
        while True:
            attempts += 1
            try:
                await self._until_stored(effect)
                return None
            except _EventFailure as failure:
                self.metrics.retries.labels("event_failed").inc()
                if attempts >= settings.max_attempts:
                    return failure.message, attempts
                await self._sleep(settings.retry_backoff_ms / 1000)

    async def _until_stored(self, effect: Callable[[], Any]) -> Any:
        """Runs `effect` until it succeeds, retrying with backoff while a store is down;
        _EventFailure when it fails for another reason."""
        delay = 0.05
        cap = self.settings.consumer.outage_backoff_max_ms / 1000
        while True:
            try:
                return await effect()
            except (Unavailable, DeadlineExceeded) as outage:
                if outage.reason in EVENT_FAILURE_REASONS:
                    # The store answered and refused this command: retrying the batch
                    # forever would stall the partition; the event's turn (and its dead letter).
                    raise _EventFailure(str(outage)) from outage
                self.metrics.retries.labels("outage").inc()
                # Lag keeps growing (and alerting) while the batch waits.
                await self._export_lag()
                logger.warning(
                    "a store the events need is down; retrying the batch",
                    extra={"error": str(outage), "retry_in_seconds": delay},
                )
                await self._sleep(delay)
                delay = min(cap, delay * 2)
            except Exception as error:
                raise _EventFailure(f"{type(error).__name__}: {error}") from error

    async def _dead_letter(self, failed: list[tuple[Message, str, int]]) -> None:
        """Writes each message, unchanged, to the dead-letter topic with what went wrong; only
        then may its offset be stored (a broker outage here is retried like any other)."""
        kafka = self.settings.kafka
        for message, error, attempts in failed:
            headers: list[tuple[str, str | bytes | None]] = [
                (ERROR_HEADER, error[:1000].encode()),
                (TOPIC_HEADER, (message.topic() or "").encode()),
                (PARTITION_HEADER, str(message.partition()).encode()),
                (OFFSET_HEADER, str(message.offset()).encode()),
                (ATTEMPTS_HEADER, str(attempts).encode()),
            ]
            key, value = message.key(), message.value()
            await self._until_stored(
                functools.partial(
                    self.dead_letters.send,
                    kafka.dead_letter_topic,
                    [(_as_bytes(key), value)],
                    timeout_seconds=kafka.delivery_timeout_ms / 1000,
                    headers=headers,
                )
            )
            self.metrics.events.labels(message.topic() or "", "dead_lettered").inc()
            logger.warning(
                "event dead-lettered",
                extra={
                    "topic": message.topic(),
                    "partition": message.partition(),
                    "offset": message.offset(),
                    "attempts": attempts,
                    "error": error,
                },
            )

    async def _store(self, next_offsets: dict[tuple[str, int], int]) -> None:
        consumer = self._consumer
        if not next_offsets or consumer is None:
            return
        offsets = [
            TopicPartition(topic, partition, offset)
            for (topic, partition), offset in sorted(next_offsets.items())
        ]
        try:
            await self._call(consumer.store_offsets, offsets=offsets)
        except KafkaException as error:
            # The partition was taken away meanwhile: its new owner redelivers (idempotent).
            logger.warning("offsets not stored", extra={"error": str(error)})
            return
        self._positions.update(next_offsets)

    async def _export_lag(self) -> None:
        """Lag per assigned partition from the high watermarks of the latest fetches (cached:
        no broker round trip) and the next offset the group would resume from."""
        now = time.monotonic()
        if now - self._last_lag_export < self.settings.consumer.lag_interval_seconds:
            return
        self._last_lag_export = now
        consumer = self._consumer
        if consumer is None:
            return

        def measure() -> list[tuple[str, int, int]]:
            lags = []
            assigned = consumer.assignment()
            unknown = [p for p in assigned if (p.topic, p.partition) not in self._positions]
            if unknown:
                # Nothing stored yet: where the group resumes (its commit) or, without one,
                # where fetching starts (auto.offset.reset), else the log start.
                for partition, committed in zip(
                    unknown, consumer.committed(unknown, timeout=1.0), strict=True
                ):
                    offset = committed.offset
                    if offset < 0:
                        offset = consumer.position([partition])[0].offset
                    if offset < 0:
                        offset = consumer.get_watermark_offsets(partition, cached=True)[0]
                    if offset >= 0:
                        self._positions[(partition.topic, partition.partition)] = offset
            for partition in assigned:
                key = (partition.topic, partition.partition)
                _, high = consumer.get_watermark_offsets(partition, cached=True)
                position = self._positions.get(key)
                if high < 0 or position is None:
                    continue
                lags.append((partition.topic, partition.partition, max(0, high - position)))
            return lags

        try:
            lags = await self._call(measure)
        except KafkaException as error:
            logger.warning("consumer lag not measured", extra={"error": str(error)})
            return
        for topic, partition, lag in lags:
            self.metrics.lag.labels(topic, str(partition)).set(lag)


def _as_bytes(key: object) -> bytes | None:
    if key is None or isinstance(key, bytes):
        return key
    return str(key).encode()


class _EventFailure(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
