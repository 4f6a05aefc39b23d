"""A real Prometheus (Debian's binary) scrapes a running platform; every seed dashboard query
and the query behind every alert of monitoring/alerts.yml must return data."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from recsys.deploy.ports import free_port_range
from recsys.errors import Unavailable
from recsys.ports.ranker import Ranker
from recsys_client import AsyncRecsysClient, ClientOptions, RecsysClientError
from tests.support.world import build_world

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "monitoring" / "alerts.yml"
# The seed's "Grafana Dashboard Queries", as the seed writes them.
SEED_QUERIES = [
    "histogram_quantile(0.99, sum(rate(recommendations_latency_total_seconds_bucket[5m])) by (le))",
    "sum(rate(recommendations_cache_hits_total[5m])) / "
    "sum(rate(recommendations_requests_total[5m]))",
    "sum(rate(recommendations_cold_start_total[5m])) / "
    "sum(rate(recommendations_requests_total[5m])) * 100",
    "sum(rate(model_inference_errors_total[5m])) / sum(rate(model_inference_requests_total[5m]))"
    " * 100",
    "histogram_quantile(0.95, sum(rate(faiss_search_latency_seconds_bucket[5m])) by (le))",
]
# Alerts on metrics this embedded world cannot have, with where they are checked instead.
ELSEWHERE = {
    # Exported by the warm-up of a shared (Redis) feature store (features.restore_path) only.
    "max(recsys_feature_snapshot_loaded)": "tests/adapters/test_redis_warmup.py",
}
COMPARISON = re.compile(r"\s*(>|<|==|!=|>=|<=)\s*[-+]?[0-9.]+\s*$")


class Failing(Ranker):
    """A model server that is down."""

    @property
    def model_version(self) -> str:
        return "ranker:down"

    async def score(self, features: np.ndarray, *, timeout: float) -> np.ndarray:
        raise Unavailable("the model server is down")


def alert_queries() -> list[str]:
    """What each alert looks at: its expression without the threshold comparison (the rules
    file keeps each `expr` on the line after its `- alert:`)."""
    queries, in_alert = [], False
    for line in RULES.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("- alert:"):
            in_alert = True
        elif stripped.startswith("- record:"):
            in_alert = False
        elif in_alert and stripped.startswith("expr:"):
            queries.append(COMPARISON.sub("", stripped.removeprefix("expr:").strip()))
            in_alert = False
    return queries


def start_prometheus(binary: str, folder: Path, metrics_port: int, web_port: int) -> Any:
    config = folder / "prometheus.yml"
    config.write_text(  # JSON is YAML
        json.dumps(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(RULES)],
                "scrape_configs": [
                    {
                        "job_name": "recsys-embedded",
                        "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}],
                    }
                ],
            }
        )
    )
    with open(folder / "prometheus.log", "wb") as log:
        return subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={folder / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{web_port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def query(address: str, expression: str) -> list[object]:
    url = f"http://{address}/api/v1/query?" + urllib.parse.urlencode({"query": expression})
    with urllib.request.urlopen(url, timeout=5) as answer:
        body = json.loads(answer.read())
    assert body["status"] == "success", body
    result: list[object] = body["data"]["result"]
    return result


async def test_every_seed_query_and_alert_has_data(tmp_path: Path) -> None:
    binary = shutil.which("prometheus")
    if binary is None:
        message = "prometheus not installed (make monitoring-tools)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    app = await build_world(tmp_path, metrics={"enabled": True, "port": 0})
    prometheus: Any = None
    try:
        assert app.metrics_endpoint is not None
        metrics_port = app.metrics_endpoint.port
        web_port, _ = free_port_range((0,))
        prometheus = await asyncio.to_thread(
            start_prometheus, binary, tmp_path, metrics_port, web_port
        )
        address = f"127.0.0.1:{web_port}"
        options = ClientOptions(target=app.address, timeout_seconds=5, retry=None)
        async with AsyncRecsysClient(options) as client:
            for _ in range(3):  # traffic over several scrapes, so rates have two samples
                await client.recommend("alice", limit=5)  # computed, then cached
                await client.recommend("alice", limit=5)
                await client.recommend("bob", surface="search", limit=5)  # cold start
                with pytest.raises(RecsysClientError):
                    await client.recommend("not a valid id!", limit=5)
                assert app.components is not None
                chain = app.components.ranking_chain
                assert chain is not None
                healthy, chain.primary = chain.primary, Failing()
                await client.recommend("kid", surface="cart", limit=5)  # model down: fallback
                chain.primary = healthy
                await asyncio.sleep(1.5)
        assert set(ELSEWHERE) <= set(alert_queries())  # no stale exemption
        expressions = SEED_QUERIES + [query for query in alert_queries() if query not in ELSEWHERE]
        missing = expressions
        deadline = time.monotonic() + 30
        while missing and time.monotonic() < deadline:
            await asyncio.sleep(1.0)
            missing = [e for e in expressions if not await asyncio.to_thread(query, address, e)]
        assert not missing, f"no data for: {missing}; see {tmp_path / 'prometheus.log'}"
        rules = await asyncio.to_thread(query, address, 'ALERTS{alertname!=""}')
        assert isinstance(rules, list)
    finally:
        if prometheus is not None:
            prometheus.terminate()
            await asyncio.to_thread(prometheus.wait, 30)
        await app.shutdown()
