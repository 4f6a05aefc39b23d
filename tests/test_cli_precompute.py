"""`recsys precompute` as an operator runs it, against a deployment on the shared Redis (features,
cache) and a PostgreSQL schema of its own: the job builds its own components from the config
file, writes `precomputed:{U}:homepage` with the tier's TTL, and the running Recommend serves
it."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from typer.testing import CliRunner

from recsys.adapters.redis.connection import user_tag
from recsys.cli import app
from recsys.domain.interactions import Interaction, InteractionKind
from recsys.grpc_server.app import GrpcApplication
from recsys_client import AsyncRecsysClient, ClientOptions
from tests.support.services import REDIS_URL
from tests.support.world import world_on_shared_stores

pytestmark = pytest.mark.integration

runner = CliRunner()


def toml(values: dict[str, Any], table: str = "") -> str:
    """The settings as a TOML file (scalars and lists of scalars; enough for these)."""
    lines = [f"[{table}]"] if table else []
    nested = []
    for key, value in values.items():
        if isinstance(value, dict):
            nested.append(toml(value, f"{table}.{key}" if table else key))
        elif value is not None:
            lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join([*lines, *nested]) + "\n"


def config_of(app: GrpcApplication, folder: Path) -> Path:
    assert app.components is not None
    settings = app.components.settings.model_dump(mode="json", exclude_defaults=True)
    path = folder / "recsys.toml"
    path.write_text(toml(settings))
    return path


async def invoke(arguments: list[str]) -> Any:
    # In a thread: the command runs its own event loop while this one keeps serving. The
    # command points the root logger at the runner's stderr, closed once it returns: the
    # serving world logs on, so the handlers go back at once.
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        return await asyncio.to_thread(runner.invoke, app, ["precompute", *arguments])
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


async def test_precompute_then_recommend_serves_from_precomputed(tmp_path: Path) -> None:
    async with world_on_shared_stores(
        tmp_path,
        features={"store": "redis"},
        recommend={"cache": "redis", "feature_timeout_ms": 2000, "cache_timeout_ms": 2000},
    ) as stores:
        world = stores.app
        assert world.components is not None
        # Active users: kid (4 interactions, hourly) and alice (3, weekly of two).
        now = dt.datetime.now(dt.UTC)
        await world.components.metadata.record_interactions(
            [Interaction(f"k{i}", "kid", i, InteractionKind.VIEW, 0.0, now) for i in (20, 21, 22)]
            + [Interaction("k24", "kid", 24, InteractionKind.VIEW, 0.0, now)]
        )
        config = config_of(world, tmp_path)
        report = tmp_path / "out" / "precompute.json"

        result = await invoke(["--config", str(config), "--report", str(report)])
        assert result.exit_code == 0, result.output
        assert "users/s" in result.output
        summary = json.loads(report.read_text())
        assert [(t["name"], t["users"], t["written"]) for t in summary["tiers"]] == [
            ("hourly", 1, 1),
            ("daily", 0, 0),
            ("weekly", 1, 1),
        ]
        assert summary["users_per_second"] > 0

        direct = aioredis.Redis.from_url(REDIS_URL)
        try:
            key = f"{stores.namespace}:precomputed:{user_tag('kid')}:homepage"
            assert 3_590 <= await direct.ttl(key) <= 3_600
            weekly = f"{stores.namespace}:precomputed:{user_tag('alice')}:homepage"
            assert 604_000 <= await direct.ttl(weekly) <= 604_800
        finally:
            await direct.aclose()

        options = ClientOptions(target=world.address, timeout_seconds=10, retry=None)
        async with AsyncRecsysClient(options) as client:
            served = await client.recommend("kid", surface="homepage", limit=20)
        assert served.degradation.served_from_precomputed
        assert len(served.items) == 20

        # Only the tier asked for; a tiny budget reaches nobody, and that is not a failure.
        only = await invoke(
            ["--config", str(config), "--tier", "weekly", "--budget-seconds", "0.001"]
        )
        assert only.exit_code == 0, only.output
        assert "hourly" not in only.output
        assert "weekly" in only.output

        unknown = await invoke(["--config", str(config), "--tier", "monthly"])
        assert unknown.exit_code == 2
        assert "unknown tier monthly" in unknown.output


def test_an_in_memory_cache_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "recsys.toml"
    config.write_text(f'[database]\nurl = "sqlite+aiosqlite:///{tmp_path / "meta.db"}"\n')
    result = runner.invoke(app, ["precompute", "--config", str(config)])
    assert result.exit_code == 2
    assert "recommend.cache is in_memory" in result.output
