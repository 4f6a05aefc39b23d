"""Load shedding end to end: a real `recsys serve embedded` process on the sample deployment,
its capacity measured with a closed loop, then twice that offered open loop. Goodput must stay
near capacity, and what cannot be served is refused fast (UNAVAILABLE, OVERLOADED) instead of
timing out after using the server."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from recsys.data.synthetic import synthetic_catalogue
from recsys.deploy.ports import free_port_range
from recsys.deploy.sample import prepare_deployment
from recsys.evaluation.evaluate import training_catalogue
from recsys.training.dataset import InteractionTable
from recsys.training.models import EmbeddingSettings, RankerSettings
from recsys.training.pipeline import train_models
from recsys_client import AsyncRecsysClient, ClientOptions
from tests.support.load import closed_loop, open_loop

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

USERS = 2_000
SURFACES = ("homepage", "item_page", "search", "cart", "email")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("overload")
    catalogue = synthetic_catalogue(5_000, USERS, interactions_per_user=10, seed=3)
    table = InteractionTable.from_catalogue(catalogue)
    # Quality does not matter here: one fold of ranker rows keeps the setup well inside
    # pytest's timeout on a busy machine.
    models = train_models(
        catalogue,
        table,
        embedding=EmbeddingSettings(factors=16, regularization=5, iterations=4),
        ranker=RankerSettings(folds=1, max_users=1_000),
    )
    deployment = asyncio.run(
        prepare_deployment(training_catalogue(catalogue, models), models, folder / "deployment")
    )
    port, _ = free_port_range((0,))
    environment = {
        **os.environ,
        "RECSYS_RECOMMEND__RATE_LIMIT_ENABLED": "false",
        "RECSYS_LOGGING__ACCESS_LOG": "false",
        "RECSYS_LOGGING__LEVEL": "ERROR",
        "RECSYS_METRICS__ENABLED": "false",
        "RECSYS_SERVER__SHUTDOWN_DRAIN_SECONDS": "0",
    }
    command = [
        str(Path(sys.executable).with_name("recsys")),
        *("serve", "embedded", "--config", str(deployment.settings_file)),
        *("--port", str(port)),
    ]
    with open(folder / "server.log", "wb") as log:
        process = subprocess.Popen(command, env=environment, stdout=log, stderr=log)
    target = f"127.0.0.1:{port}"
    try:
        asyncio.run(_wait_until_serving(target, process))
        yield target
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def _wait_until_serving(target: str, process: subprocess.Popen[bytes]) -> None:
    async with AsyncRecsysClient(ClientOptions(target=target, retry=None)) as client:
        for _ in range(600):
            if process.poll() is not None:
                raise RuntimeError("the server exited; see server.log")
            try:
                if await client.check_health("readiness", timeout=1.0) == "SERVING":
                    return
            except Exception:
                pass
            await asyncio.sleep(0.2)
    raise TimeoutError("the server did not become ready")


async def test_goodput_holds_at_twice_the_capacity_with_fast_refusals(server: str) -> None:
    # One attempt per call: what the server does, not what retries hide.
    options = ClientOptions(target=server, timeout_seconds=1.0, retry=None)
    async with AsyncRecsysClient(options) as client:

        async def call(number: int) -> object:
            # Distinct users and surfaces: the response cache answers (almost) nothing.
            user = f"user{(number * 7919) % USERS}"
            return await client.recommend(user, surface=SURFACES[number % 5], limit=10)

        await closed_loop(call, workers=4, seconds=2.0)  # warm up
        capacity = await closed_loop(call, workers=8, seconds=5.0)
        assert capacity.codes["OK"] > 20, capacity.codes
        offered = 2 * capacity.goodput
        overload = await open_loop(call, rate=offered, seconds=8.0)
    summary = (
        f"capacity {capacity.goodput:.1f}/s {dict(capacity.codes)}; offered {offered:.1f}/s: "
        f"goodput {overload.goodput:.1f}/s {dict(overload.codes)}, refusals p95 "
        f"{overload.quantile('UNAVAILABLE', 0.95) * 1000:.0f} ms"
    )
    print(summary)
    assert overload.goodput >= 0.8 * capacity.goodput, summary
    total = sum(overload.codes.values())
    # What is not served is refused, not timed out.
    assert overload.codes["DEADLINE_EXCEEDED"] <= 0.05 * total, summary
    assert set(overload.codes) <= {"OK", "UNAVAILABLE", "DEADLINE_EXCEEDED"}, summary
    if overload.codes["UNAVAILABLE"]:
        assert overload.quantile("UNAVAILABLE", 0.95) < 0.5, summary
