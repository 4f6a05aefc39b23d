"""A Redis server of a test's own (the machine's `redis-server`, no persistence, on a free
loopback port, its files under the test's tmp folder), to break as the drills do: killed and
restarted empty on the same port, frozen (SIGSTOP) and thawed (SIGCONT). Never the shared
server on 6379. Under CI=true a missing binary fails the test; elsewhere it is skipped."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from recsys.deploy.ports import free_port_range
from tests.support.redis_cluster import READY_SECONDS, require_redis_binaries


class OwnRedis:
    def __init__(self, folder: Path) -> None:
        self.binary, _ = require_redis_binaries()
        self.folder = folder
        self.port = free_port_range([0])[0]
        self.process: subprocess.Popen[bytes] | None = None
        self.frozen = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Starts the server (empty) and waits until it answers PING."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--dir", str(self.folder),
                "--save", "",
                "--appendonly", "no",
                "--logfile", str(self.folder / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(port=self.port, socket_timeout=1, socket_connect_timeout=1)
        deadline = time.monotonic() + READY_SECONDS
        try:
            while True:
                try:
                    if client.ping():
                        return
                except redis.RedisError:
                    pass
                assert self.process.poll() is None, "redis-server exited at startup"
                assert time.monotonic() < deadline, f"redis-server on {self.port} did not start"
                time.sleep(0.05)
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL: everything in it is lost (no persistence)."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)
        self.frozen = False

    def freeze(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)
        self.frozen = False

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        if self.frozen:
            self.thaw()
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@contextmanager
def own_redis(folder: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(folder)
    server.start()
    try:
        yield server
    finally:
        server.stop()
