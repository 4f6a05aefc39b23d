"""The platform the drills break: the distributed layout (`recsys up`: 10 shards, retrieve,
rank, two recommend replicas, the local Kafka broker and the event consumer) on its own Redis,
its own PostgreSQL primary with a streaming replica, and MLServer serving the trained ranker
behind the Triton backend, every one on free loopback ports under one work folder. Nothing
here touches the machine's shared Redis or PostgreSQL.

The deployment is `recsys demo`'s sample (a synthetic catalogue, trained) prepared in the
folder; its SQL side is loaded into the PostgreSQL primary and its feature snapshot into Redis
(and named as the store's warm-up snapshot, so a Redis restarted empty is filled again)."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from recsys.deploy.ports import free_port_range
from recsys.deploy.supervisor import RANK_OFFSET, RETRIEVE_OFFSET, layout_offsets
from tests.support import mlserver
from tests.support.own_redis import OwnRedis
from tests.support.postgres_cluster import PostgresCluster

RECSYS = str(Path(sys.executable).with_name("recsys"))
NUM_SHARDS = 10
RECOMMEND_REPLICAS = 2


def say(message: str) -> None:
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(each) for each in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key} = {toml_value(each)}" for key, each in value.items()) + "}"
    return json.dumps(str(value))


def write_toml(path: Path, settings: dict[str, Any]) -> None:
    """Top-level values, then one table per section (nested tables as dotted names)."""
    lines: list[str] = []

    def table(prefix: str, values: dict[str, Any]) -> None:
        scalars = {key: value for key, value in values.items() if not isinstance(value, dict)}
        if prefix:
            lines.append(f"[{prefix}]")
        lines.extend(f"{key} = {toml_value(value)}" for key, value in scalars.items())
        for key, value in values.items():
            if isinstance(value, dict):
                table(f"{prefix}.{key}" if prefix else key, value)

    table("", settings)
    path.write_text("\n".join(lines) + "\n")


def run_command(
    arguments: list[str], *, environment: dict[str, str], log: Path, timeout: float
) -> None:
    with log.open("ab") as handle:
        completed = subprocess.run(
            arguments, env=environment, stdout=handle, stderr=subprocess.STDOUT, timeout=timeout,
            check=False,
        )  # fmt: skip
    if completed.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{' '.join(arguments[1:3])} failed ({completed.returncode}):\n{tail}")


def _health(address: str, service: str, timeout: float = 1.0) -> bool:
    try:
        with grpc.insecure_channel(address) as channel:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        return bool(response.status == health_pb2.HealthCheckResponse.SERVING)
    except grpc.RpcError:
        return False


@dataclass(frozen=True)
class Catalogue:
    items: int = 3000
    users: int = 1000
    interactions_per_user: int = 20
    seed: int = 0

    def arguments(self) -> list[str]:
        return [
            "--items", str(self.items), "--users", str(self.users),
            "--interactions-per-user", str(self.interactions_per_user), "--seed", str(self.seed),
        ]  # fmt: skip


class Platform:
    """Everything the drills run against; `with Platform(folder).running():`."""

    def __init__(self, folder: Path, catalogue: Catalogue = Catalogue()) -> None:
        self.folder = folder
        self.catalogue = catalogue
        self.deployment = folder / "deployment"
        self.logs = folder / "logs"
        self.redis = OwnRedis(folder / "redis")
        self.postgres = PostgresCluster(folder / "postgres")
        self.mlserver: mlserver.MLServerProcess | None = None
        self.supervisor: subprocess.Popen[bytes] | None = None
        self.base_port = 0
        self.public_port = 0
        self.config = folder / "drills.toml"
        self.settings: dict[str, Any] = {}
        # Every child pid seen (stopped at the end even if the supervisor died first).
        self._known_children: dict[int, list[str]] = {}

    # ------------------------------------------------------------------ addresses

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.public_port}"

    @property
    def retrieve_address(self) -> str:
        return f"127.0.0.1:{self.base_port + RETRIEVE_OFFSET}"

    @property
    def rank_address(self) -> str:
        return f"127.0.0.1:{self.base_port + RANK_OFFSET}"

    @property
    def broker_address(self) -> str:
        from recsys.deploy.supervisor import BROKER_OFFSET

        return f"127.0.0.1:{self.base_port + BROKER_OFFSET}"

    def recsys_settings(self) -> Any:
        """The layout's settings as its processes read them (drills.toml)."""
        from recsys.settings import load_settings

        return load_settings(config_file=self.config)

    def environment(self) -> dict[str, str]:
        return {**os.environ, "RECSYS_CONFIG_FILE": str(self.config)}

    # ------------------------------------------------------------------ preparing

    def prepare_deployment(self) -> None:
        say(f"preparing the sample deployment in {self.deployment} (recsys demo)")
        self.folder.mkdir(parents=True, exist_ok=True)
        run_command(
            [RECSYS, "demo", *self.catalogue.arguments(), "--folder", str(self.deployment),
             "--port", "0", "--exit-after-samples"],
            environment=dict(os.environ), log=self.folder / "prepare.log", timeout=900,
        )  # fmt: skip

    def model_file(self) -> Path:
        repository = Path(self.settings["rank"]["model_repository"])
        model = repository / self.settings["rank"].get("model_name", "ranker")
        versions = sorted((path for path in model.iterdir() if path.name.isdigit()),
                          key=lambda path: int(path.name))  # fmt: skip
        return versions[-1] / "model.onnx"

    def feature_width(self) -> int:
        import onnxruntime

        session = onnxruntime.InferenceSession(
            str(self.model_file()), providers=["CPUExecutionProvider"]
        )
        width = session.get_inputs()[0].shape[1]
        return int(width) if isinstance(width, int) else 17

    def write_settings(self) -> None:
        settings = tomllib.loads((self.deployment / "recsys.toml").read_text())
        self.settings = settings
        features = settings.setdefault("features", {})
        snapshot = features.pop("preload_path", None) or str(
            self.deployment / "training" / "features.npz"
        )
        features.update(store="redis", restore_path=snapshot)
        settings["mode"] = "distributed"
        settings.setdefault("database", {}).update(
            url=self.postgres.url("postgres"), statement_timeout_ms=3000
        )
        settings.setdefault("redis", {}).update(
            url=self.redis.url, namespace="drills", socket_timeout_ms=200, connect_timeout_ms=200
        )
        settings.setdefault("recommend", {}).update(
            cache="redis",
            # The drills measure the pipeline under each fault: an answer cached a second
            # earlier would hide it (and 1 s is the smallest TTL).
            cache_ttl_seconds=1,
            # Budgets for 19 processes on 2 cores rather than the seed's production ones
            # (10-100 ms): with those, scheduling delays alone degrade answers here, and a
            # drill would measure the machine instead of the fault. Each is still far below
            # the client's 2 s deadline, so a dead or frozen dependency shows as a flag.
            retrieve_timeout_ms=400,
            rank_timeout_ms=400,
            metadata_timeout_ms=200,
            feature_timeout_ms=100,
            cache_timeout_ms=100,
        )
        settings.setdefault("candidates", {}).update(neighbours_timeout_ms=200)
        # What production runs with (docs/operations.md): item metadata held in process, so a
        # database outage degrades the history and profile reads, not every item.
        settings.setdefault("metadata_cache", {}).update(enabled=True)
        settings.setdefault("retrieve", {}).update(shard_timeout_ms=300)
        settings.setdefault("realtime", {}).update(counters="redis")
        settings.setdefault("rate_limit", {}).update(
            limiter="redis", requests_per_window=100_000_000
        )
        assert self.mlserver is not None
        settings.setdefault("rank", {}).update(
            backend="triton", triton_url=self.mlserver.url, timeout_ms=300, feature_timeout_ms=200
        )
        settings.setdefault("index", {}).update(snapshot_poll_seconds=2.0)
        settings.setdefault("metrics", {}).update(enabled=True, host="127.0.0.1")
        settings.setdefault("logging", {}).update(access_log=False)
        settings.setdefault("server", {}).update(shutdown_drain_seconds=2.0)
        write_toml(self.config, settings)

    def start_mlserver(self) -> None:
        if self.mlserver is None:
            self.mlserver = mlserver.prepare(self.folder / "mlserver", self.model_file())
            settings_file = self.mlserver.folder / "model-settings.json"
            model_settings = json.loads(settings_file.read_text())
            model_settings["inputs"][0]["shape"] = [-1, self.feature_width()]
            settings_file.write_text(json.dumps(model_settings))
        self.mlserver.start(timeout=120)

    def load_stores(self) -> None:
        say("loading the SQL metadata into PostgreSQL and the features into Redis")
        environment = self.environment()
        steps = [
            ("db-upgrade", [RECSYS, "db", "upgrade"]),
            ("data-load", [RECSYS, "data", "load", "--metadata-only", *self.catalogue.arguments()]),
            (
                "data-features",
                [RECSYS, "data", "features", self.settings["features"]["restore_path"]],
            ),
        ]
        for name, arguments in steps:
            run_command(
                arguments, environment=environment, log=self.folder / f"{name}.log", timeout=600
            )

    # ------------------------------------------------------------------ running

    @contextmanager
    def running(self) -> Iterator[Platform]:
        try:
            if not (self.deployment / "recsys.toml").is_file():
                self.prepare_deployment()
            self.settings = tomllib.loads((self.deployment / "recsys.toml").read_text())
            # A kept work folder is run again: only the deployment is reused.
            for stale in ("postgres", "redis", "mlserver", "logs"):
                shutil.rmtree(self.folder / stale, ignore_errors=True)
            say("starting Redis, PostgreSQL (primary + streaming replica) and MLServer")
            self.redis.start()
            self.postgres.start_primary()
            self.postgres.start_replica()
            self.postgres.wait_streaming()
            self.start_mlserver()
            self.write_settings()
            self.load_stores()
            self.start_layout()
            yield self
        finally:
            self.stop()

    def start_layout(self) -> None:
        offsets = layout_offsets(NUM_SHARDS, RECOMMEND_REPLICAS)
        self.base_port, (self.public_port,) = free_port_range(offsets, extra=1)
        self.logs.mkdir(parents=True, exist_ok=True)
        say(f"starting recsys up on {self.address} (base port {self.base_port})")
        handle = (self.folder / "up.log").open("ab")
        self.supervisor = subprocess.Popen(
            [RECSYS, "up", "--base-port", str(self.base_port), "--log-dir", str(self.logs),
             "--recommend-replicas", str(RECOMMEND_REPLICAS)],
            env={**self.environment(), "RECSYS_SERVER__PORT": str(self.public_port)},
            stdout=handle, stderr=subprocess.STDOUT,
        )  # fmt: skip
        handle.close()
        self.wait_ready(timeout=300)
        say("the platform is ready")

    def wait_ready(self, timeout: float) -> float:
        """Seconds until Recommend, Retrieve, Rank and every shard say SERVING."""
        started = time.monotonic()
        deadline = started + timeout
        addresses = [self.address, self.retrieve_address, self.rank_address]
        addresses += [f"127.0.0.1:{self.base_port + shard}" for shard in range(NUM_SHARDS)]
        while not all(_health(address, "readiness") for address in addresses):
            assert self.supervisor is not None
            if self.supervisor.poll() is not None:
                raise RuntimeError(f"recsys up exited; see {self.folder / 'up.log'}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the layout was not ready in {timeout} s; see {self.logs}")
            time.sleep(0.5)
        return time.monotonic() - started

    def live(self, timeout: float = 1.0) -> bool:
        return _health(self.address, "liveness", timeout)

    def stop(self) -> None:
        """Stops everything started, each step on its own: one failing leaves none running."""
        steps = [self._stop_layout, self.redis.stop, self.postgres.stop]
        if self.mlserver is not None:
            steps.insert(1, functools.partial(self.mlserver.stop, kill=True))
        for step in steps:
            try:
                step()
            except Exception as error:  # the next steps still run
                say(f"stopping: {error!r}")

    def _stop_layout(self) -> None:
        if self.supervisor is None:
            return
        self._known_children.update(
            {pid: _cmdline(pid) for pid in _children(self.supervisor.pid, recursive=True)}
        )
        if self.supervisor.poll() is None:
            self.supervisor.terminate()
            try:
                self.supervisor.wait(90)
            except subprocess.TimeoutExpired:
                self.supervisor.kill()
                self.supervisor.wait()
        for pid, arguments in self._known_children.items():
            # Orphans of a supervisor that died first; a pid seen earlier may belong to another
            # process by now, so only one with the same command line (ports included) is ours.
            if arguments and _cmdline(pid) == arguments:
                _signal(pid, signal.SIGKILL)

    # ------------------------------------------------------------------ children

    def child_pids(self) -> dict[str, int]:
        """The supervisor's children by name (shard-3, retrieve, rank, recommend-0, consume,
        broker), read from /proc."""
        assert self.supervisor is not None
        children: dict[str, int] = {}
        recommend = 0
        found = _children(self.supervisor.pid)
        self._known_children.update({pid: _cmdline(pid) for pid in found})
        for pid in sorted(found):
            arguments = _cmdline(pid)
            if "serve" not in arguments:
                if arguments and "broker" in arguments:
                    children["broker"] = pid
                continue
            role = arguments[arguments.index("serve") + 1]
            if role == "shard":
                children[f"shard-{arguments[arguments.index('--shard-id') + 1]}"] = pid
            elif role.startswith("recommend"):
                children[f"recommend-{recommend}"] = pid
                recommend += 1
            else:
                children[role] = pid
        return children

    def kill_child(self, name: str, signal_number: int = signal.SIGKILL) -> int:
        pid = self.child_pids()[name]
        _signal(pid, signal_number)
        return pid

    def wait_child(self, name: str, *, other_than: int, timeout: float) -> int:
        """The pid of `name` once the supervisor restarted it (not `other_than`)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid = self.child_pids().get(name)
            if pid is not None and pid != other_than:
                return pid
            time.sleep(0.2)
        raise RuntimeError(f"{name} was not restarted within {timeout} s")

    def metrics_port(self, name: str) -> int:
        arguments = _cmdline(self.child_pids()[name])
        return int(arguments[arguments.index("--metrics-port") + 1])

    def metric(self, name: str, metric: str, labels: dict[str, str] | None = None) -> float | None:
        """The sum of `metric`'s samples (with these labels) on a child's /metrics."""
        try:
            port = self.metrics_port(name)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as answer:
                body = answer.read().decode()
        except (OSError, KeyError, ValueError):
            return None
        total, found = 0.0, False
        for line in body.splitlines():
            if not line.startswith(metric) or line.startswith("#"):
                continue
            head, _, value = line.rpartition(" ")
            sample, _, label_text = head.partition("{")
            if sample != metric:
                continue
            if labels and not all(f'{key}="{each}"' in label_text for key, each in labels.items()):
                continue
            total += float(value)
            found = True
        return total if found else None

    def wait_for(
        self, condition: Callable[[], bool], timeout: float, poll: float = 0.2
    ) -> float | None:
        """Seconds until `condition` held (None: not within `timeout`)."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if condition():
                return time.monotonic() - started
            time.sleep(poll)
        return None


def _children(root: int, *, recursive: bool = False) -> set[int]:
    """The children of `root` (with `recursive`, every descendant), read from /proc."""
    found: set[int] = set()
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        try:
            tasks = Path(f"/proc/{parent}/task").iterdir()
            for task in tasks:
                text = (task / "children").read_text().split()
                for child in map(int, text):
                    if child not in found:
                        found.add(child)
                        if recursive:
                            frontier.append(child)
        except OSError:
            continue
    return found


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _signal(pid: int, signal_number: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal_number)
