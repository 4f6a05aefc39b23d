"""Shared fixtures: settings for tests and real gRPC servers on loopback port 0."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest

from recsys.grpc_server.app import GrpcApplication, ServiceBinding
from recsys.settings import RecsysSettings, load_settings

# The checkout's sibling `shared/` (as on the development and CI machines), or a path of your own.
ML_100K = Path(
    os.environ.get(
        "RECSYS_TEST_MOVIELENS",
        Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-100k",
    )
)


@pytest.fixture(scope="module")
def movielens_path() -> Path:
    if not (ML_100K / "u.data").is_file():
        message = f"MovieLens 100K not found at {ML_100K}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return ML_100K


ADDRESS_PATTERN = re.compile(r'"address": "(127\.0\.0\.1:\d+)"')


def make_settings(**overrides: Any) -> RecsysSettings:
    """Settings for an in-process test server: ephemeral ports, no drain delay, and no metrics
    endpoint unless asked for (stopping it waits for its 0.5 s poll interval)."""
    server = {"port": 0, "shutdown_drain_seconds": 0.0, "shutdown_grace_seconds": 2.0}
    server.update(overrides.pop("server", {}))
    metrics: dict[str, object] = {"port": 0, "enabled": False}
    metrics.update(overrides.pop("metrics", {}))
    # Never the working tree's var/: every test server gets its own snapshot folder.
    index: dict[str, object] = {"snapshot_dir": tempfile.mkdtemp(prefix="recsys-snapshots-")}
    index.update(overrides.pop("index", {}))
    return load_settings(server=server, metrics=metrics, index=index, **overrides)


@pytest.fixture
def settings() -> RecsysSettings:
    return make_settings()


StartApp = Callable[..., Awaitable[GrpcApplication]]


@pytest.fixture
async def start_app(settings: RecsysSettings) -> AsyncIterator[StartApp]:
    """Starts GrpcApplications in this test's event loop; shuts them down afterwards."""
    started: list[GrpcApplication] = []

    async def start(
        bindings: Sequence[ServiceBinding] = (),
        *,
        generic_handlers: Sequence[grpc.GenericRpcHandler] = (),
        app_settings: RecsysSettings | None = None,
    ) -> GrpcApplication:
        application = GrpcApplication(
            app_settings or settings, bindings, generic_handlers=generic_handlers
        )
        await application.start()
        started.append(application)
        return application

    yield start
    for application in started:
        await application.shutdown()


@contextlib.contextmanager
def app_in_thread(
    build: Callable[[], Awaitable[GrpcApplication]],
) -> Iterator[GrpcApplication]:
    """Runs a GrpcApplication in its own event loop thread, for blocking (sync) clients."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start() -> GrpcApplication:
        application = await build()
        await application.start()
        return application

    application = asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=10)
    try:
        yield application
    finally:
        asyncio.run_coroutine_threadsafe(application.shutdown(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        loop.close()


def wait_for_address(process: subprocess.Popen[str], timeout: float = 30.0) -> str:
    """Reads a server process's JSON logs until it says where it listens."""
    assert process.stderr is not None
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            if process.poll() is not None:
                break
            continue
        seen.append(line)
        if "grpc server listening" in line:
            match = ADDRESS_PATTERN.search(line)
            assert match, line
            return match.group(1)
    raise AssertionError("server did not report its address:\n" + "".join(seen))


def drain_stderr(process: subprocess.Popen[str]) -> threading.Thread:
    """Keeps reading a child's stderr so its pipe never fills up; returns the reader thread."""
    assert process.stderr is not None
    stream = process.stderr
    lines: list[str] = []

    def read() -> None:
        for line in stream:
            lines.append(line)

    thread = threading.Thread(target=read, daemon=True)
    thread.lines = lines  # type: ignore[attr-defined]
    thread.start()
    return thread
