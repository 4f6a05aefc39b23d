"""Starts a real MLServer (KServe V2) process on 127.0.0.1 serving the ONNX ranker."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2  # noqa: F401 - imported for its side-free types only

from recsys.deploy.ports import free_port

HERE = Path(__file__).resolve().parent / "mlserver_ranker"
MLSERVER = str(Path(sys.executable).with_name("mlserver"))


@dataclass
class MLServerProcess:
    folder: Path
    grpc_port: int
    http_port: int
    metrics_port: int
    log: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self, *, delay_seconds: float = 0.0, timeout: float = 90.0) -> None:
        environment = {**os.environ, "RECSYS_TEST_MODEL_DELAY_SECONDS": str(delay_seconds)}
        environment["PYTHONPATH"] = (
            str(self.folder) + os.pathsep + environment.get("PYTHONPATH", "")
        )
        handle = open(self.log, "ab")  # noqa: SIM115 - closed by the process's exit
        self.process = subprocess.Popen(
            [MLSERVER, "start", str(self.folder)],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=environment,
            cwd=self.folder,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("MLServer exited:\n" + self.log.read_text()[-3000:])
            if self._model_ready():
                return
            time.sleep(0.3)
        raise RuntimeError("MLServer did not get ready:\n" + self.log.read_text()[-3000:])

    def _model_ready(self) -> bool:
        import tritonclient.grpc as triton

        try:
            client = triton.InferenceServerClient(self.url)
            ready = bool(client.is_model_ready("ranker"))
            client.close()
            return ready
        except Exception:
            return False

    def stop(self, *, kill: bool = False) -> None:
        if self.process is not None and self.process.poll() is None:
            if kill:
                self.process.kill()
            else:
                self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        # MLServer runs workers as child processes: make sure the port is free again.
        for _ in range(50):
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.grpc_port)) != 0:
                    return
            time.sleep(0.1)


def prepare(folder: Path, model_file: Path) -> MLServerProcess:
    """Writes MLServer's settings and the ranker's model settings into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(HERE / "runtime.py", folder / "runtime.py")
    server = MLServerProcess(folder, free_port(), free_port(), free_port(), folder / "mlserver.log")
    (folder / "settings.json").write_text(
        json.dumps(
            {
                "host": "127.0.0.1",
                "grpc_port": server.grpc_port,
                "http_port": server.http_port,
                "metrics_port": server.metrics_port,
                "parallel_workers": 0,
                "debug": False,
            }
        )
    )
    (folder / "model-settings.json").write_text(
        json.dumps(
            {
                "name": "ranker",
                "implementation": "runtime.OnnxRanker",
                # What Triton reads from config.pbtxt: the tensors of the model's metadata.
                "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 12]}],
                "outputs": [{"name": "scores", "datatype": "FP32", "shape": [-1, 1]}],
                "parameters": {"uri": str(model_file), "version": "1"},
            }
        )
    )
    return server


__all__ = ["MLServerProcess", "free_port", "grpc", "prepare"]
