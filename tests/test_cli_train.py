"""The offline loop through the real commands: train -> index build -> serve -> Recommend,
`recsys eval`, `recsys data load`, and the sample deployment `make run` starts."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from recsys import services
from recsys.cli import app
from recsys_client import AsyncRecsysClient, ClientOptions
from recsys_client.errors import RecsysClientError
from tests.conftest import make_settings

runner = CliRunner()
SYNTHETIC = ["--items", "500", "--users", "120", "--interactions-per-user", "20", "--seed", "9"]


def recsys(*arguments: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "recsys.cli", *arguments],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.e2e
async def test_train_build_serve_recommend(tmp_path: Path) -> None:
    repository = tmp_path / "models"
    trained = recsys(
        "train", *SYNTHETIC, "--output", str(tmp_path / "training"),
        "--model-repository", str(repository), "--embedding-version", "als-e2e",
        "--factors", "16",
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    assert "model ranker:1" in trained.stdout
    assert "next: recsys index build" in trained.stdout
    report = json.loads((tmp_path / "training/train_report.json").read_text())
    assert report["model_version"] == "1"
    assert report["ranker_groups"] > 0

    built = recsys(
        "index", "build", "--embeddings", str(tmp_path / "training/item_embeddings.npz"),
        "--snapshots", str(tmp_path / "snapshots"), "--index-type", "flat", "--no-normalize",
        "--index-version", "idx-e2e",
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    assert "CURRENT now points at it" in built.stdout

    settings = make_settings(
        tmp_path,
        index={
            "snapshot_dir": str(tmp_path / "snapshots"),
            "spec": {"dimension": 16, "normalize": False},
            "snapshot_poll_seconds": 0,
        },
        rank={"model_repository": str(repository), "reload_poll_seconds": 0},
        features={"preload_path": str(tmp_path / "training/features.npz")},
        database={"url": f"sqlite+aiosqlite:///{tmp_path / 'meta.db'}"},
        recommend={"feature_timeout_ms": 500, "cache_timeout_ms": 500},
        logging={"access_log": False},
    )
    application = await services.build_application(settings, ["embedded"])
    try:
        port = await application.start()
        # Items must be known to the metadata store to pass the privacy filters; their
        # features are the trained ones the snapshot preloaded.
        from recsys.data.catalogue import load_catalogue
        from recsys.data.synthetic import synthetic_catalogue

        catalogue = synthetic_catalogue(500, 120, interactions_per_user=20, seed=9)
        await load_catalogue(catalogue, metadata=application.components.metadata, features=None)
        store = application.components.feature_store
        user = await store.get_user_features("user7")
        items = await store.get_item_features([0, 1])
        options = ClientOptions(target=f"127.0.0.1:{port}", timeout_seconds=10.0)
        async with AsyncRecsysClient(options) as client:
            response = await client.recommend("user7", limit=10)
            history = {e.item_id for e in catalogue.interactions if e.user_id == "user7"}
            with pytest.raises(RecsysClientError) as refused:
                await client.recommend("", limit=10)
    finally:
        await application.shutdown()
    assert user.embedding is not None
    assert user.embedding.embedding_version == "als-e2e"
    assert user.preferences
    assert items.embeddings is not None
    assert items.embeddings.shape == (2, 16)
    assert len(response.items) == 10
    assert not response.cold_start
    assert response.model_version == "ranker:1"
    assert response.index_version == "idx-e2e"
    assert not response.degradation.default_features
    assert not response.degradation.popularity_candidates
    assert not response.degradation.fallback_ranking
    assert not {item.item_id for item in response.items} & history
    assert refused.value.code.name == "INVALID_ARGUMENT"


@pytest.mark.e2e
def test_eval_prints_the_table_and_writes_the_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `recsys eval` deploys into a folder of the system temp directory; here, under tmp_path.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    report = tmp_path / "quality.json"
    result = runner.invoke(
        app,
        ["eval", *SYNTHETIC, "--protocol", "random", "--no-served", "--report", str(report)],
    )
    assert result.exit_code == 0, result.output
    assert "| per-user random 75/25 | candidate sources + ranking |" in result.output
    (written,) = json.loads(report.read_text())
    assert set(written["rows"]) == {
        "popularity",
        "retrieval",
        "item neighbours",
        "EASE^R",
        "candidate sources + ranking",
    }
    assert written["training"]["candidate_mix"]["retrieval"] > 0
    assert 0 < written["rows"]["retrieval"]["ndcg"] <= 1


def test_eval_refuses_an_unknown_protocol() -> None:
    result = runner.invoke(app, ["eval", *SYNTHETIC, "--protocol", "sideways"])
    assert result.exit_code == 1
    assert "--protocol" in result.output


def test_data_load_fills_the_configured_stores(tmp_path: Path) -> None:
    config = tmp_path / "recsys.toml"
    # A fresh file: `data load` migrates it as `serve` would, no `recsys db upgrade` first.
    config.write_text(f'[database]\nurl = "sqlite+aiosqlite:///{tmp_path / "meta.db"}"\n')
    result = runner.invoke(app, ["data", "load", "--config", str(config), *SYNTHETIC])
    assert result.exit_code == 0, result.output
    assert "loaded 500 items, 120 users and 2400 interactions" in result.output
    assert "feature store" in result.output
    metadata_only = runner.invoke(
        app, ["data", "load", "--config", str(config), *SYNTHETIC, "--metadata-only"]
    )
    assert metadata_only.exit_code == 0, metadata_only.output
    assert "interactions (sql metadata)" in metadata_only.output


@pytest.mark.e2e
def test_the_sample_deployment_prepares_serves_and_prints(tmp_path: Path) -> None:
    folder = tmp_path / "sample"
    arguments = ["demo", *SYNTHETIC, "--folder", str(folder), "--port", "0", "--exit-after-samples"]
    first = recsys(*arguments)
    assert first.returncode == 0, first.stderr
    assert "sample deployment ready" in first.stderr
    assert "user user0: Picked for you (model ranker:1" in first.stdout
    assert "user someone-new: Based on your preferences" in first.stdout  # cold start
    assert "recsys.v1.RecommendService/Recommend" in first.stdout
    assert (folder / "recsys.toml").is_file()
    again = recsys(*arguments)
    assert again.returncode == 0, again.stderr
    assert "using the sample deployment" in again.stderr
    assert "user user0: Picked for you" in again.stdout


@pytest.mark.integration
def test_train_loads_the_features_into_redis(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio
    import uuid

    import redis.asyncio as aioredis

    from recsys.adapters.redis.features import RedisFeatureStore
    from tests.support.services import require_redis

    url = require_redis()
    namespace = f"test-train-{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("RECSYS_FEATURES__STORE", "redis")
    monkeypatch.setenv("RECSYS_REDIS__URL", url)
    monkeypatch.setenv("RECSYS_REDIS__NAMESPACE", namespace)
    result = runner.invoke(
        app,
        ["train", *SYNTHETIC, "--output", str(tmp_path / "training"),
         "--model-repository", str(tmp_path / "models"), "--embedding-version", "als-redis",
         "--factors", "16", "--load-features"],
    )  # fmt: skip

    async def check() -> None:
        store = RedisFeatureStore(aioredis.Redis.from_url(url), namespace=namespace)
        try:
            user = await store.get_user_features("user3")
            assert user.embedding is not None
            assert user.embedding.embedding_version == "als-redis"
            assert user.embedding.vector.shape == (16,)
            assert user.preferences
            items = await store.get_item_features([0, 499])
            assert items.found.all()
            assert items.embeddings is not None
            assert await store.get_default_user_embedding() is not None
        finally:
            await store.close()

    async def clean() -> None:
        client = aioredis.Redis.from_url(url)
        keys = [key async for key in client.scan_iter(match=f"{namespace}:*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()

    try:
        assert result.exit_code == 0, result.output
        assert "loaded 120 users and 500 items (als-redis) into the redis feature store" in (
            result.output
        )
        asyncio.run(check())
    finally:
        asyncio.run(clean())
