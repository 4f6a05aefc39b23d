"""The Redis drill in small, on a Redis of the test's own with the serving timeouts (50 ms
sockets): frozen (SIGSTOP) and killed, Recommend answers every call with items and the
default-features flag, liveness and readiness stay SERVING; restarted empty, the warm-up
restores the feature snapshot (features.restore_path) and answers are personalised again
without a hand step."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest

from recsys.data.features_file import FeatureSnapshot, save_features
from recsys.grpc_server.app import GrpcApplication
from recsys.v1 import recommend_service_pb2
from recsys_client import AsyncRecsysClient, ClientOptions
from tests.support.health import health_status
from tests.support.own_redis import OwnRedis, own_redis
from tests.support.world import CATEGORIES, build_world, catalogue

pytestmark = pytest.mark.integration

CHECK_SECONDS = 0.2
USERS = {"alice": 1, "kid": 2}  # the world's users with embeddings, and their vectors' rows


def world_snapshot() -> FeatureSnapshot:
    vectors, items = catalogue()
    return FeatureSnapshot(
        embedding_version="e1",
        generated_at=dt.datetime.now(dt.UTC),
        user_ids=list(USERS),
        user_vectors=vectors[list(USERS.values())],
        preference_categories=CATEGORIES,
        user_preferences=np.zeros((len(USERS), len(CATEGORIES)), np.float32),
        item_ids=np.array([item.item_id for item in items], np.int64),
        item_categories=[item.category for item in items],
        item_popularity=np.array([item.popularity for item in items], np.float32),
        item_freshness=np.full(len(items), 0.5, np.float32),
        item_vectors=vectors,
        default_user_vector=vectors.mean(axis=0),
    )


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[OwnRedis]:
    with own_redis(tmp_path / "redis") as server:
        yield server


@pytest.fixture
async def served(tmp_path: Path, redis_server: OwnRedis) -> AsyncIterator[GrpcApplication]:
    snapshot = tmp_path / "features.npz"
    save_features(snapshot, world_snapshot())
    app = await build_world(
        tmp_path,
        # The serving defaults the drill runs with: 50 ms sockets, 50 ms feature budget.
        redis={"url": redis_server.url, "namespace": "outage"},
        features={"store": "redis", "restore_path": str(snapshot),
                  "restore_check_seconds": CHECK_SECONDS},
        recommend={"cache": "redis", "feature_timeout_ms": 50, "cache_timeout_ms": 50},
        # On Redis like the drill's, and high enough for this test's polling.
        rate_limit={"limiter": "redis", "requests_per_window": 100_000},
        server={"admission_enabled": False},
    )  # fmt: skip
    try:
        yield app
    finally:
        await app.shutdown()


def client_for(app: GrpcApplication) -> AsyncRecsysClient:
    return AsyncRecsysClient(ClientOptions(target=app.address, timeout_seconds=5, retry=None))


async def personalised(app: GrpcApplication, user: str) -> bool:
    """A fresh answer (an exclusion skips the response cache) retrieved with the user's own
    embedding: not default features, not cold start (what a store without it gives)."""
    async with client_for(app) as client:
        response = await client.recommend(user, limit=10, excluded_item_ids=[0])
    return (
        bool(response.items)
        and bool(response.index_version)
        and not response.cold_start
        and not response.degradation.default_features
        and not response.degradation.popularity_candidates
    )


async def eventually_personalised(app: GrpcApplication, *, within: float) -> float:
    started = time.monotonic()
    while not all([await personalised(app, user) for user in USERS]):
        assert time.monotonic() - started < within, f"still degraded after {within} s"
        await asyncio.sleep(0.2)
    return time.monotonic() - started


async def calls_during(app: GrpcApplication, seconds: float) -> list[tuple[str, object, float]]:
    """Recommend for each user and both health names, over and over for `seconds`: every
    answer (or the error) and its latency, in order."""
    seen: list[tuple[str, object, float]] = []
    deadline = time.monotonic() + seconds
    async with client_for(app) as client:
        while time.monotonic() < deadline:
            for user in USERS:
                started = time.monotonic()
                try:
                    answer: object = await client.recommend(user, limit=10)
                except Exception as error:  # collected: the test fails on any
                    answer = error
                seen.append((user, answer, time.monotonic() - started))
            for name in ("liveness", "readiness"):
                started = time.monotonic()
                status = await health_status(app.address, name)
                seen.append((name, status, time.monotonic() - started))
    return seen


def assert_degraded_not_failed(seen: list[tuple[str, object, float]]) -> None:
    answers = [value for name, value, _ in seen if name in USERS]
    assert len(answers) >= 4, seen
    # Each Redis read gives up after its 50 ms socket timeout: answers stay fast (a loaded
    # 2-core machine's slack included), never near the client's deadline.
    slowest = max(seconds for _, _, seconds in seen)
    assert slowest < 2.0, slowest
    for answer in answers:
        assert isinstance(answer, recommend_service_pb2.RecommendResponse), answer
        assert len(answer.items) == 10
        assert answer.degradation.default_features
    health = {value for name, value, _ in seen if name not in USERS}
    assert health == {"SERVING"}, seen


@pytest.mark.parametrize("outage", ["frozen", "killed"])
async def test_a_redis_outage_answers_flagged_and_stays_live(
    served: GrpcApplication, redis_server: OwnRedis, outage: str
) -> None:
    await eventually_personalised(served, within=20)
    if outage == "frozen":
        redis_server.freeze()
        try:
            seen = await calls_during(served, 3.0)
        finally:
            redis_server.thaw()
        assert_degraded_not_failed(seen)
        # Its data kept: the next answers are personalised again.
        await eventually_personalised(served, within=10)
        return
    redis_server.kill()
    seen = await calls_during(served, 3.0)
    assert_degraded_not_failed(seen)
    redis_server.start()  # empty: the warm-up restores the snapshot
    seconds = await eventually_personalised(served, within=15)
    assert seconds < 10 * CHECK_SECONDS + 5.0, seconds
    components = served.components
    assert components is not None
    value = components.registry.get_sample_value(
        "recsys_feature_restores_total", {"outcome": "restored"}
    )
    assert value == 2  # at startup (a fresh Redis) and after the restart
