"""SIGTERM drill on a real server process: readiness goes NOT_SERVING first, the in-flight call
completes within the grace period, then the process exits cleanly."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from google.protobuf import wrappers_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import drain_stderr, wait_for_address
from tests.support.probe import probe_callable

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


def _status(stub: health_pb2_grpc.HealthStub, service: str) -> str:
    try:
        response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=0.5)
    except grpc.RpcError as error:
        return error.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def test_sigterm_drains_then_finishes_in_flight_calls() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.support.probe_server"],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        address = wait_for_address(process)
        reader = drain_stderr(process)
        channel = grpc.insecure_channel(address)
        health = health_pb2_grpc.HealthStub(channel)
        assert _status(health, "readiness") == "SERVING"

        sleep = probe_callable(channel, "Sleep")
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(sleep, wrappers_pb2.StringValue(value="3"), timeout=20)
            time.sleep(0.5)  # the call is now being served
            process.send_signal(signal.SIGTERM)

            observed: list[tuple[str, str]] = []
            deadline = time.monotonic() + 10
            while process.poll() is None and time.monotonic() < deadline:
                observed.append((_status(health, "readiness"), _status(health, "liveness")))
                time.sleep(0.05)
            result = in_flight.result(timeout=10)

        assert result.value == "slept"  # the in-flight call completed
        assert process.wait(timeout=10) == 0
        # During the drain the server still answers: readiness NOT_SERVING, liveness SERVING.
        assert ("NOT_SERVING", "SERVING") in observed
        # Readiness never went back to SERVING after the signal.
        assert "SERVING" not in [readiness for readiness, _ in observed]
        channel.close()
        reader.join(timeout=5)
        messages = "".join(reader.lines)  # type: ignore[attr-defined]
        assert messages.index("readiness NOT_SERVING") < messages.index("grpc server stopped")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
