"""Redis deployments for the tests, started from the machine's `redis-server`: a 3-master Redis
Cluster (`redis-cli --cluster create`) and a master watched by one Sentinel, on free loopback
ports, their files under a pytest tmp folder. Under CI=true a missing binary fails the test; on
a developer machine it is skipped with the reason.

`redis_client` gives the contract suites a client of either kind of server (the machine's
standalone Redis, or this run's cluster through the `redis_cluster` fixture of conftest.py)
built by the adapters' own factory, so the cluster path is the one production takes."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from recsys.adapters.redis.connection import RedisClient, create_client
from recsys.deploy.ports import free_port_range
from recsys.settings import RedisSettings
from tests.support.services import require_redis

# The servers the contract suites run against beside the in-memory adapters.
REDIS_KINDS = ("redis", "redis_cluster")
MASTERS = 3
MASTER_NAME = "recsys-master"
# Start-up of a server, the cluster's agreement, a sentinel's view: seconds on a loaded machine.
READY_SECONDS = 30.0


def require_redis_binaries() -> tuple[str, str]:
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server is None or cli is None:
        message = "redis-server and redis-cli are needed to start a Redis Cluster"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + " (CI=true: a missing service is a failure)")
        pytest.skip(message)
    return server, cli


def _cli(cli: str, port: int, *command: str) -> str:
    done = subprocess.run(
        [cli, "-h", "127.0.0.1", "-p", str(port), *command],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    return done.stdout


def _wait_until(what: str, condition: Callable[[], bool]) -> None:
    """Polls `condition` until it holds or READY_SECONDS pass."""
    deadline = time.monotonic() + READY_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {READY_SECONDS:.0f} s")
        time.sleep(0.05)


@contextmanager
def _server(server: str, folder: Path, name: str, *arguments: str) -> Iterator[None]:
    """One redis-server process (no persistence, loopback only), stopped on exit."""
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / f"{name}.log"
    process = subprocess.Popen(
        [
            server,
            *arguments,
            "--bind",
            "127.0.0.1",
            "--dir",
            str(folder),
            "--save",
            "",
            "--appendonly",
            "no",
            "--logfile",
            str(log),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def running_cluster(folder: Path) -> Iterator[str]:
    """A 3-master Redis Cluster (no replicas); yields one node's URL, the startup address."""
    server, cli = require_redis_binaries()
    # Client ports, then the cluster bus ports (set explicitly: port + 10000 could fall into
    # the ephemeral range).
    base, _ = free_port_range(range(2 * MASTERS))
    ports = [base + offset for offset in range(MASTERS)]
    with ExitStack() as stack:
        for index, port in enumerate(ports):
            stack.enter_context(
                _server(
                    server,
                    folder,
                    f"node-{port}",
                    "--port",
                    str(port),
                    "--cluster-enabled",
                    "yes",
                    "--cluster-port",
                    str(base + MASTERS + index),
                    "--cluster-config-file",
                    str(folder / f"nodes-{port}.conf"),
                    "--cluster-node-timeout",
                    "5000",
                )
            )
        for port in ports:
            _wait_until(f"redis-server on {port} started", functools.partial(_ping, cli, port))
        created = subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{port}" for port in ports),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert created.returncode == 0, created.stdout + created.stderr
        for port in ports:
            _wait_until(f"cluster_state:ok on {port}", functools.partial(_cluster_ok, cli, port))
        yield f"redis://127.0.0.1:{ports[0]}/0"


@contextmanager
def running_sentinel(folder: Path) -> Iterator[tuple[str, str]]:
    """A master and one Sentinel watching it as MASTER_NAME; yields (master URL, sentinel
    "host:port")."""
    server, cli = require_redis_binaries()
    base, _ = free_port_range([0, 1])
    master, sentinel = base, base + 1
    config = folder / "sentinel.conf"  # the sentinel rewrites its own file
    folder.mkdir(parents=True, exist_ok=True)
    config.write_text(
        f"port {sentinel}\nbind 127.0.0.1\ndir {folder}\n"
        f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master} 1\n"
    )
    with ExitStack() as stack:
        stack.enter_context(_server(server, folder, "master", "--port", str(master)))
        stack.enter_context(_server(server, folder, "sentinel", str(config), "--sentinel"))
        _wait_until(f"redis-server on {master} started", lambda: _ping(cli, master))
        _wait_until(
            "the sentinel names the master",
            lambda: (
                str(master)
                in _cli(cli, sentinel, "sentinel", "get-master-addr-by-name", MASTER_NAME)
            ),
        )
        yield f"redis://127.0.0.1:{master}/0", f"127.0.0.1:{sentinel}"


def _ping(cli: str, port: int) -> bool:
    return _cli(cli, port, "ping").strip() == "PONG"


def _cluster_ok(cli: str, port: int) -> bool:
    return "cluster_state:ok" in _cli(cli, port, "cluster", "info")


def redis_client(request: pytest.FixtureRequest, kind: str, *, retries: int = 0) -> RedisClient:
    """A client of the kind's server ("redis": the machine's, "redis_cluster": this run's
    cluster), from the adapters' factory with timeouts for a loaded test machine."""
    if kind == "redis":
        settings = RedisSettings(url=require_redis())
    else:
        settings = RedisSettings(mode="cluster", url=request.getfixturevalue("redis_cluster"))
    settings = settings.model_copy(update={"socket_timeout_ms": 5000, "connect_timeout_ms": 2000})
    return create_client(settings, retries=retries)


async def remove_keys(client: RedisClient, namespace: str) -> None:
    """Deletes the namespace's keys (on a cluster, from every node), one by one."""
    keys = [key async for key in client.scan_iter(match=f"{namespace}:*")]
    for key in keys:
        await client.delete(key)
