"""Starting recsys server processes for benchmarks and reading where they listen."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

RECSYS = str(Path(sys.executable).with_name("recsys"))
ADDRESS = re.compile(r'"address": "(127\.0\.0\.1:\d+)"')
METRICS = re.compile(r'"address": "(http://127\.0\.0\.1:\d+/metrics)"')


@dataclass
class ServerProcess:
    process: subprocess.Popen[str]
    address: str = ""
    metrics_url: str = ""
    lines: list[str] = field(default_factory=list)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start(arguments: list[str], environment: Mapping[str, str]) -> ServerProcess:
    process = subprocess.Popen(
        [RECSYS, "serve", *arguments, "--port", "0", "--metrics-port", "0"],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **environment},
    )
    return ServerProcess(process)


def _drain(stream: object) -> None:
    for _ in stream:  # type: ignore[attr-defined]
        pass


def wait_ready(server: ServerProcess, timeout: float = 300) -> ServerProcess:
    assert server.process.stderr is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = server.process.stderr.readline()
        if not line:
            if server.process.poll() is not None:
                raise RuntimeError("server exited:\n" + "".join(server.lines[-20:]))
            continue
        server.lines.append(line)
        if "metrics endpoint listening" in line and (match := METRICS.search(line)):
            server.metrics_url = match.group(1)
        if "grpc server listening" in line and (match := ADDRESS.search(line)):
            server.address = match.group(1)
            threading.Thread(target=_drain, args=(server.process.stderr,), daemon=True).start()
            return server
    raise RuntimeError("server did not start in time")
