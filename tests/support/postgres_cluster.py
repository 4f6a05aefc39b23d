"""A PostgreSQL primary and a streaming replica from the machine's binaries (initdb,
pg_basebackup, pg_ctl), on their own loopback ports, their files under one folder: what the
failover tests and the drills harness stop and promote. No pytest here (the harness imports it).

PostgreSQL refuses to run as root. Run by root, every binary runs as the `postgres` user with
one ambient capability, CAP_DAC_READ_SEARCH, so it can reach a folder under a root-only parent
(pytest's /tmp/pytest-of-root is 0700) without loosening that parent's permissions."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg

from recsys.deploy.ports import free_port

BINARIES = Path("/usr/lib/postgresql")
# Start-up, streaming, promotion: seconds on a loaded 2-core machine.
READY_SECONDS = 30.0
# A Unix socket path longer than this does not fit sockaddr_un (108 bytes with the NUL).
SOCKET_PATH_LIMIT = 100
OS_USER = "postgres"
SETTINGS = """
listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = '{sockets}'
wal_level = replica
max_wal_senders = 5
hot_standby = on
# Throwaway servers on a shared machine: no fsync; the OS keeps what an immediate stop leaves.
fsync = off
full_page_writes = off
shared_buffers = 16MB
max_connections = 60
"""


class PostgresClusterError(RuntimeError):
    """A server did not start, stream or promote in time; the message names its log file."""


def binaries() -> Path:
    """The newest installed PostgreSQL's bin folder."""
    versions = sorted(
        (folder for folder in BINARIES.glob("*") if (folder / "bin" / "initdb").exists()),
        key=lambda folder: [int(part) for part in folder.name.split(".") if part.isdigit()],
    )
    if not versions:
        raise PostgresClusterError(f"no PostgreSQL binaries under {BINARIES}/*/bin")
    return versions[-1] / "bin"


def available() -> bool:
    return BINARIES.is_dir() and any(BINARIES.glob("*/bin/initdb"))


class PostgresCluster:
    """`start_primary()`, `start_replica()`, `wait_streaming()`; then the fault:
    `stop_primary()`, `promote()`; `stop()` in a finally (idempotent)."""

    def __init__(self, folder: Path, *, ports: Iterator[int] | None = None) -> None:
        self.folder = folder / "postgres"
        self.bin = binaries()
        # The drills harness passes ports of its layout; tests take the kernel's.
        self._ports = ports
        self._primary_port = 0
        self._replica_port = 0
        self._running: dict[str, Path] = {}
        self._frozen: list[int] = []

    @property
    def primary_port(self) -> int:
        return self._primary_port

    @property
    def replica_port(self) -> int:
        return self._replica_port

    def url(self, database: str = "postgres") -> str:
        """The SQLAlchemy URL naming both servers: psycopg connects to one that accepts writes,
        so new connections follow a promotion without a configuration change. The hosts are
        tried in random order, each for at most 2 s: a hung old primary named first would
        otherwise hold every new connection (psycopg's default: 130 s per host)."""
        hosts = "&".join(
            f"host=127.0.0.1:{port}" for port in (self._primary_port, self._replica_port) if port
        )
        return (
            f"postgresql+psycopg://postgres@/{database}?{hosts}"
            "&target_session_attrs=read-write&load_balance_hosts=random&connect_timeout=2"
        )

    def log(self, name: str) -> Path:
        return self.folder / f"{name}.log"

    def start_primary(self) -> None:
        self._prepare_folder()
        self._primary_port = self._next_port()
        data = self.folder / "primary"
        self._run(
            "initdb",
            ["initdb", "-D", data, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8",
             "--locale=C"],
            timeout=120,
        )  # fmt: skip
        with (data / "postgresql.conf").open("a") as settings:
            settings.write(SETTINGS.format(port=self._primary_port, sockets=self._sockets()))
        self._start("primary", data)

    def start_replica(self) -> None:
        if "primary" not in self._running:
            raise PostgresClusterError("start the primary before the replica")
        self._replica_port = self._next_port()
        data = self.folder / "replica"
        # -R: standby.signal and primary_conninfo; -X stream: the WAL written meanwhile too.
        self._run(
            "pg_basebackup",
            ["pg_basebackup", "-h", "127.0.0.1", "-p", str(self._primary_port), "-U", "postgres",
             "-D", data, "-R", "-X", "stream", "--checkpoint=fast", "--no-sync"],
            timeout=120,
        )  # fmt: skip
        with (data / "postgresql.conf").open("a") as settings:
            # The copied configuration names the primary's port; the later line wins.
            settings.write(f"\nport = {self._replica_port}\n")
        self._start("replica", data)

    def wait_streaming(self) -> None:
        """Until the primary reports the replica streaming and the replica is in recovery."""

        def streaming() -> bool:
            rows = self._query(self._primary_port, "SELECT state FROM pg_stat_replication")
            recovering = self._query(self._replica_port, "SELECT pg_is_in_recovery()")
            return ("streaming",) in rows and recovering == [(True,)]

        self._wait("the replica streaming from the primary", "replica", streaming)

    def wait_replayed(self) -> None:
        """Until the replica has replayed everything the primary has written so far."""
        ((written,),) = self._query(self._primary_port, "SELECT pg_current_wal_lsn()::text")

        def replayed() -> bool:
            ((caught_up,),) = self._query(
                self._replica_port,
                f"SELECT pg_last_wal_replay_lsn() >= '{written}'::pg_lsn",
            )
            return bool(caught_up)

        self._wait(f"the replica replaying up to {written}", "replica", replayed)

    def stop_primary(self, mode: str = "immediate") -> None:
        """`pg_ctl stop -m <mode>`: immediate drops every connection at once, like a crash."""
        self._stop("primary", mode)

    def freeze_primary(self) -> None:
        """SIGSTOP to the primary's postmaster and every child (each child is a session of
        its own, so not one process group): connections stay open and nothing answers, as
        when its host hangs."""
        postmaster = self._postmaster_pid("primary")
        self._frozen = [postmaster, *_children(postmaster)]
        for pid in self._frozen:
            os.kill(pid, signal.SIGSTOP)

    def thaw_primary(self) -> None:
        for pid in self._frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self._frozen = []

    def promote(self) -> None:
        """`pg_ctl promote`, then until the replica accepts writes."""
        wait = ["-w", "-t", str(int(READY_SECONDS))]
        self._run(
            "pg_ctl promote",
            ["pg_ctl", "promote", "-D", self.folder / "replica", *wait],
            timeout=READY_SECONDS + 10,
            log=self.log("replica"),
        )

        def writable() -> bool:
            return self._query(self._replica_port, "SELECT pg_is_in_recovery()") == [(False,)]

        self._wait("the promoted replica accepting writes", "replica", writable)

    def stop(self) -> None:
        """Every server still running, at once (immediate); safe to call again."""
        self.thaw_primary()  # a stopped process would not take pg_ctl's signal
        failures: list[PostgresClusterError] = []
        for name in list(self._running):
            try:
                self._stop(name, "immediate")
            except PostgresClusterError as error:  # killed; the others are still stopped
                failures.append(error)
        if failures:
            raise failures[0]

    def _prepare_folder(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "sockets").mkdir(exist_ok=True)
        if os.geteuid() == 0:
            account = pwd.getpwnam(OS_USER)
            for path in (self.folder, self.folder / "sockets"):
                os.chown(path, account.pw_uid, account.pw_gid)

    def _sockets(self) -> str:
        """The Unix socket folder, or none (TCP only) when its path would be too long."""
        sockets = self.folder / "sockets"
        if len(f"{sockets}/.s.PGSQL.65535.lock") > SOCKET_PATH_LIMIT:
            return ""
        return str(sockets)

    def _next_port(self) -> int:
        return next(self._ports) if self._ports is not None else free_port()

    def _start(self, name: str, data: Path) -> None:
        log = self.log(name)
        self._running[name] = data
        self._run(
            f"the {name}",
            ["pg_ctl", "start", "-D", data, "-l", log, "-w", "-t", str(int(READY_SECONDS))],
            timeout=READY_SECONDS + 10,
            log=log,
        )

    def _stop(self, name: str, mode: str) -> None:
        data = self._running.pop(name, None)
        if data is None:
            return
        try:
            self._run(
                f"stopping the {name}",
                ["pg_ctl", "stop", "-D", data, "-m", mode, "-w", "-t", str(int(READY_SECONDS))],
                timeout=READY_SECONDS + 10,
                log=self.log(name),
            )
        except PostgresClusterError:
            # pg_ctl could not stop it: the postmaster's pid file says whom to kill.
            with contextlib.suppress(OSError, ValueError, IndexError):
                os.kill(_pid_of(data), signal.SIGKILL)
            raise

    def _postmaster_pid(self, name: str) -> int:
        data = self._running.get(name)
        if data is None:
            raise PostgresClusterError(f"the {name} is not running")
        return _pid_of(data)

    def _run(
        self, what: str, command: list[str | Path], *, timeout: float, log: Path | None = None
    ) -> None:
        program = str(self.bin / str(command[0]))
        arguments = [program, *(str(part) for part in command[1:])]
        if os.geteuid() == 0:
            setpriv = shutil.which("setpriv")
            if setpriv is None:
                raise PostgresClusterError("running as root needs setpriv to drop to postgres")
            arguments = [
                setpriv, f"--reuid={OS_USER}", f"--regid={OS_USER}", "--init-groups",
                "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search", *arguments,
            ]  # fmt: skip
        where = f"; see {log}{_tail(log)}" if log is not None else ""
        try:
            done = subprocess.run(
                arguments,
                cwd=self.folder,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                # pg_ctl's server would otherwise share the caller's process group and its
                # Ctrl-C; stop() ends it.
                start_new_session=True,
            )
        except subprocess.TimeoutExpired as error:
            raise PostgresClusterError(f"{what} took longer than {timeout:.0f} s{where}") from error
        if done.returncode != 0:
            output = (done.stdout + done.stderr).strip().splitlines()[-5:]
            raise PostgresClusterError(
                f"{what} failed (exit {done.returncode}){where}: " + " | ".join(output)
            )

    def _query(self, port: int, statement: str) -> list[tuple[object, ...]]:
        with psycopg.connect(
            host="127.0.0.1", port=port, user="postgres", dbname="postgres",
            autocommit=True, connect_timeout=2,
        ) as connection:  # fmt: skip
            return list(connection.execute(statement.encode()).fetchall())

    def _wait(self, what: str, name: str, condition: Callable[[], bool]) -> None:
        deadline = time.monotonic() + READY_SECONDS
        last = ""
        while True:
            try:
                if condition():
                    return
            except psycopg.Error as error:
                last = f" (last error: {str(error).strip().splitlines()[0]})"
            if time.monotonic() > deadline:
                raise PostgresClusterError(
                    f"{what} did not happen within {READY_SECONDS:.0f} s{last}; "
                    f"see {self.log(name)}{_tail(self.log(name))}"
                )
            time.sleep(0.05)


def _pid_of(data: Path) -> int:
    """The postmaster's pid, the first line of its pid file."""
    return int((data / "postmaster.pid").read_text().splitlines()[0])


def _children(parent: int) -> list[int]:
    """The processes whose parent is `parent` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            # The fields after the command name (which may hold spaces): state, ppid, ...
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == parent:
                found.append(int(entry.name))
    return found


def _tail(log: Path, lines: int = 3) -> str:
    """The log's last lines, for an error message (nothing when it cannot be read)."""
    try:
        last = log.read_text(errors="replace").strip().splitlines()[-lines:]
    except OSError:
        return ""
    return " (ends: " + " | ".join(last) + ")" if last else ""
