"""Shared fixtures: settings for tests and real gRPC servers on loopback port 0."""

from __future__ import annotations

import asyncio
import contextlib
import logging
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


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A 3-master Redis Cluster for the whole run (started on first use; tests keep to a
    namespace of their own): the URL of one node, the startup address."""
    from tests.support.redis_cluster import running_cluster

    with running_cluster(tmp_path_factory.mktemp("redis-cluster")) as url:
        yield url


ADDRESS_PATTERN = re.compile(r'"address": "(127\.0\.0\.1:\d+)"')


def make_settings(folder: Path, **overrides: Any) -> RecsysSettings:
    """Settings for an in-process test server: ephemeral ports, no drain delay, and no metrics
    endpoint unless asked for (stopping it waits for its 0.5 s poll interval).

    `folder` is the test's tmp_path (never the working tree's var/ or the system temp folder):
    each call gets its own snapshot folder and SQLite file, in a fresh folder under it."""
    workspace = Path(tempfile.mkdtemp(prefix="settings-", dir=folder))
    server = {"port": 0, "shutdown_drain_seconds": 0.0, "shutdown_grace_seconds": 2.0}
    server.update(overrides.pop("server", {}))
    metrics: dict[str, object] = {"port": 0, "enabled": False}
    metrics.update(overrides.pop("metrics", {}))
    snapshots = workspace / "snapshots"
    snapshots.mkdir()
    index: dict[str, object] = {"snapshot_dir": str(snapshots)}
    index.update(overrides.pop("index", {}))
    database: dict[str, object] = {"url": f"sqlite+aiosqlite:///{workspace / 'meta.db'}"}
    database.update(overrides.pop("database", {}))
    return load_settings(
        server=server, metrics=metrics, index=index, database=database, **overrides
    )


@pytest.fixture
def settings(tmp_path: Path) -> RecsysSettings:
    return make_settings(tmp_path)


@pytest.fixture(autouse=True)
def _root_logger_restored() -> Iterator[None]:
    """`recsys serve` run in-process (CliRunner) points the root logger at that run's stderr;
    put the logger back, or later tests log into a closed stream (and print the errors)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


# What a run may leave in the system temp folder: nothing under this prefix. Temporary files
# of tests belong under tmp_path, which pytest cleans up (keeping the last few runs to look at).
TEMP_PREFIX = "recsys-"
_temp_at_start = pytest.StashKey[set[str]]()
_temp_left = pytest.StashKey[list[str]]()


def _recsys_temp_entries() -> set[str]:
    """This user's `recsys-*` entries in the system temp folder (other users' runs are theirs)."""
    entries = set()
    for path in Path(tempfile.gettempdir()).glob(f"{TEMP_PREFIX}*"):
        with contextlib.suppress(OSError):  # removed meanwhile
            if path.lstat().st_uid == os.getuid():
                entries.add(path.name)
    return entries


def pytest_sessionstart(session: pytest.Session) -> None:
    # Compared at the end, so leftovers of earlier or concurrent runs are not this run's fault.
    session.config.stash[_temp_at_start] = _recsys_temp_entries()


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fails the run (exit code 1) when it left new `recsys-*` entries in the temp folder."""
    before = session.config.stash.get(_temp_at_start, None)
    if before is None or hasattr(session.config, "workerinput"):
        return  # not started here, or an xdist worker: the controller compares
    left = sorted(_recsys_temp_entries() - before)
    if left:
        session.config.stash[_temp_left] = left
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    left = config.stash.get(_temp_left, [])
    if left:
        shown = ", ".join(left[:10]) + (f" and {len(left) - 10} more" if len(left) > 10 else "")
        terminalreporter.write_sep("=", "temporary files left behind", red=True)
        terminalreporter.write_line(
            f"this run left {len(left)} new {TEMP_PREFIX}* entries in {tempfile.gettempdir()}: "
            f"{shown}; tests must keep temporary files under tmp_path / tmp_path_factory",
            red=True,
        )


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
