"""`recsys up --tls`: the distributed layout under mutual TLS on every port answers without
degradation, while a caller without the layout's client certificate is refused."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from recsys.data.synthetic import synthetic_catalogue
from recsys.deploy.ports import free_port_range
from recsys.deploy.sample import prepare_deployment
from recsys.deploy.supervisor import RANK_OFFSET, RETRIEVE_OFFSET, layout_offsets
from recsys.evaluation.evaluate import environment_of, evaluation_overrides, training_catalogue
from recsys.training.dataset import InteractionTable
from recsys.training.models import EmbeddingSettings
from recsys.training.pipeline import train_models
from recsys.v1 import common_pb2
from recsys_client import AsyncRecsysClient, ClientOptions, RecsysClientError, TlsOptions

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

RECSYS = str(Path(sys.executable).with_name("recsys"))
NUM_SHARDS = 2


def start(command: list[str], environment: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as output:
        return subprocess.Popen(command, env=environment, stdout=output, stderr=output)


def stop(supervisor: subprocess.Popen[bytes]) -> None:
    supervisor.send_signal(signal.SIGTERM)
    try:
        supervisor.wait(timeout=60)
    except subprocess.TimeoutExpired:
        supervisor.kill()
        supervisor.wait()


async def wait_until_ready(
    addresses: list[str], tls: TlsOptions, process: subprocess.Popen[bytes]
) -> None:
    deadline = time.monotonic() + 180
    for address in addresses:
        options = ClientOptions(target=address, tls=tls, retry=None)
        async with AsyncRecsysClient(options) as client:
            while True:
                assert process.poll() is None, "recsys up exited"
                try:
                    if await client.check_health("readiness", timeout=1.0) == "SERVING":
                        break
                except RecsysClientError:
                    pass
                assert time.monotonic() < deadline, f"{address} not serving after 180 s"
                await asyncio.sleep(0.3)


@pytest.mark.timeout(420)
async def test_the_layout_under_mutual_tls_answers_without_degradation(tmp_path: Path) -> None:
    catalogue = synthetic_catalogue(600, 60, interactions_per_user=15, category_count=6, seed=4)
    table = InteractionTable.from_catalogue(catalogue)
    models = await asyncio.to_thread(
        train_models, catalogue, table,
        embedding=EmbeddingSettings(factors=8, regularization=5, iterations=3),
    )  # fmt: skip
    deployment = await prepare_deployment(
        training_catalogue(catalogue, models), models, tmp_path / "deployment",
        num_shards=NUM_SHARDS,
    )  # fmt: skip
    base, (public,) = free_port_range(layout_offsets(NUM_SHARDS), extra=1)
    overrides = evaluation_overrides(candidates=200)
    overrides["logging"] = {"access_log": False, "level": "INFO"}
    environment = {
        **{key: value for key, value in os.environ.items() if not key.startswith("RECSYS_")},
        **environment_of(overrides),
        "RECSYS_SERVER__PORT": str(public),
        "RECSYS_SERVER__SHUTDOWN_DRAIN_SECONDS": "0",
    }
    tls_dir, logs = tmp_path / "tls", tmp_path / "logs"
    command = [RECSYS, "up", "--config", str(deployment.settings_file), "--base-port", str(base),
               "--log-dir", str(logs), "--tls", "--tls-dir", str(tls_dir)]  # fmt: skip
    supervisor = await asyncio.to_thread(start, command, environment, tmp_path / "up.log")
    try:
        for _ in range(100):  # the certificates exist before any child starts
            if (tls_dir / "client.key").exists():
                break
            await asyncio.sleep(0.1)
        tls = TlsOptions(
            root_certificates=(tls_dir / "ca.crt").read_bytes(),
            certificate_chain=(tls_dir / "client.crt").read_bytes(),
            private_key=(tls_dir / "client.key").read_bytes(),
        )
        servers = [*range(NUM_SHARDS), RETRIEVE_OFFSET, RANK_OFFSET]
        addresses = [f"127.0.0.1:{base + offset}" for offset in servers]
        target = f"127.0.0.1:{public}"
        await wait_until_ready([*addresses, target], tls, supervisor)

        users = list(models.table.user_ids[:8])
        options = ClientOptions(target=target, tls=tls, timeout_seconds=30)
        async with AsyncRecsysClient(options) as client:
            for user in users:
                answer = await client.recommend(user, limit=10)
                assert answer.items, user
                assert not answer.cold_start, user
                # No popularity_candidates, partial_retrieval, fallback_ranking or any other.
                assert not answer.degradation.ListFields(), (user, answer.degradation)
                assert answer.ranking_backend == common_pb2.RANKING_BACKEND_MODEL

        # The startup probe polls each dependency every second until it answers: let it land.
        for _ in range(300):
            log = (logs / "recommend.log").read_text()
            if log.count('"message": "dependency reachable"') >= 2:
                break
            await asyncio.sleep(0.1)

        # Every port refuses a caller without the layout's client certificate.
        anonymous = TlsOptions(root_certificates=tls.root_certificates)
        for address in [*addresses, target]:
            for refused in (ClientOptions(target=address, retry=None),
                            ClientOptions(target=address, tls=anonymous, retry=None)):  # fmt: skip
                async with AsyncRecsysClient(refused) as client:
                    with pytest.raises(RecsysClientError) as caught:
                        await client.check_health("readiness", timeout=2.0)
                    assert caught.value.code is grpc.StatusCode.UNAVAILABLE
    finally:
        await asyncio.to_thread(stop, supervisor)
    assert supervisor.returncode == 0
    assert f"mutual TLS: CA {tls_dir / 'ca.crt'}" in (tmp_path / "up.log").read_text()
    recommend_log = (logs / "recommend.log").read_text()
    # The startup probe reached both dependencies through the same TLS channels.
    assert recommend_log.count('"message": "dependency reachable"') == 2
    assert "refuses this process's channel" not in recommend_log
    assert all(key.stat().st_mode & 0o777 == 0o600 for key in tls_dir.glob("*.key"))
