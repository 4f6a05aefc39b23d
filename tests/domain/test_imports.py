"""The domain and the ports import no infrastructure: importing them in a fresh interpreter
loads no index, database, cache, model runtime, RPC or metrics library."""

from __future__ import annotations

import json
import subprocess
import sys

INFRASTRUCTURE = (
    "faiss",
    "sqlalchemy",
    "redis",
    "onnxruntime",
    "grpc",
    "prometheus_client",
    "pydantic",
)

PROGRAM = """
import importlib, json, pkgutil, sys
import recsys.domain, recsys.ports
names = []
for package in (recsys.domain, recsys.ports):
    for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        importlib.import_module(module.name)
        names.append(module.name)
print(json.dumps({"modules": names, "loaded": sorted(sys.modules)}))
"""


def test_domain_and_ports_load_no_infrastructure() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM], capture_output=True, text=True, check=True, timeout=120
    )
    report = json.loads(done.stdout)
    assert "recsys.domain.recommend.pipeline" in report["modules"]
    assert "recsys.ports.candidates" in report["modules"]
    loaded = {name.partition(".")[0] for name in report["loaded"]}
    assert not loaded & set(INFRASTRUCTURE)
