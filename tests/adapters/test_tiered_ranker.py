"""The tiered ranker: built from settings over a model repository holding both models, it routes
each request whole by the user's activity; in the Rank service, a full model behind an
unreachable inference server opens the breaker while casual users keep the small model."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest

from recsys import services
from recsys.adapters.rankers.onnx import OnnxRanker
from recsys.adapters.rankers.tiered import TieredRanker
from recsys.deploy.ports import free_port
from recsys.domain.circuit_breaker import BreakerState
from recsys.domain.rank_routing import ACTIVITY_COLUMN, Tier
from recsys.domain.ranking import RANKING_FEATURES
from recsys.errors import ConfigurationError, NotFound
from recsys.ports.features import ItemFeatures, UserEmbedding
from recsys.ranking.model_repository import ModelRepository
from recsys.ranking.reference_model import write_reference_version
from recsys.registry import create_adapter
from recsys.settings import load_settings
from recsys.v1 import common_pb2
from recsys_client import AsyncRecsysClient, ClientOptions
from tests.conftest import make_settings

# The small model weighs popularity only, so its order differs from the full model's.
SMALL_WEIGHTS = {"item_popularity": 1.0}


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    for version in ("1", "2"):
        write_reference_version(root / "ranker", version)
        write_reference_version(root / "ranker_small", version, weights=SMALL_WEIGHTS)
    return root


def settings_for(folder: Path, repository: Path, **rank: object):  # type: ignore[no-untyped-def]
    values: dict[str, object] = {
        "backend": "tiered",
        "tiered_full_backend": "onnx",
        "model_repository": str(repository),
        "full_model_min_activity": 0.5,
        "reload_poll_seconds": 0,
    }
    values.update(rank)
    return make_settings(folder, rank=values, logging={"access_log": False})


@pytest.mark.parametrize(
    ("rank", "message"),
    [
        ({"backend": "tiered", "small_model_name": "ranker"}, "must differ"),
        ({"full_model_min_activity": -0.1}, "full_model_min_activity"),
        ({"full_model_min_activity": "nan"}, "full_model_min_activity"),
        ({"tiered_full_backend": "tiered"}, "tiered_full_backend"),
        ({"small_model_name": "../ranker"}, "small_model_name"),
    ],
)
def test_settings_refuse_a_tiering_that_cannot_work(rank: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        load_settings(rank=rank)


def test_defaults_route_the_seeds_share_to_the_full_model() -> None:
    rank = load_settings(rank={"backend": "tiered"}).rank
    assert (rank.tiered_full_backend, rank.small_model_name) == ("triton", "ranker_small")
    assert rank.full_model_min_activity == 0.125


def matrix(dot: float) -> np.ndarray:
    rng = np.random.default_rng(0)
    features = rng.random((6, len(RANKING_FEATURES))).astype(np.float32)
    features[:, ACTIVITY_COLUMN] = dot
    return features


async def test_routes_by_activity_and_scores_with_the_tiers_model(
    tmp_path: Path, repository: Path
) -> None:
    ranker = create_adapter("ranker", "tiered", settings_for(tmp_path, repository))
    assert isinstance(ranker, TieredRanker)
    assert ranker.in_process  # ONNX full model: no CPU fallback needed
    assert (ranker.full.model_version, ranker.small.model_version) == (
        "ranker:2",
        "ranker_small:2",
    )
    small = OnnxRanker(ModelRepository(repository, "ranker_small"))
    small.load("2")
    full = OnnxRanker(ModelRepository(repository, "ranker"))
    full.load("2")
    casual, engaged = matrix(0.1), matrix(0.9)
    assert ranker.route(casual)[0] is Tier.SMALL
    assert ranker.route(engaged)[0] is Tier.FULL
    np.testing.assert_array_equal(
        await ranker.score(casual, timeout=5), await small.score(casual, timeout=5)
    )
    np.testing.assert_array_equal(
        await ranker.score(engaged, timeout=5), await full.score(engaged, timeout=5)
    )
    assert not np.array_equal(
        await small.score(casual, timeout=5), await full.score(casual, timeout=5)
    )
    await ranker.close()


async def test_a_pinned_version_pins_both_models(tmp_path: Path, repository: Path) -> None:
    ranker = create_adapter(
        "ranker", "tiered", settings_for(tmp_path, repository, model_version="1")
    )
    assert (ranker.full.model_version, ranker.small.model_version) == (
        "ranker:1",
        "ranker_small:1",
    )
    assert not await ranker.small.reload()  # pinned: the newer version 2 stays unloaded


async def test_a_missing_small_model_is_reported(tmp_path: Path, repository: Path) -> None:
    settings = settings_for(tmp_path, repository, small_model_name="ranker_tiny")
    with pytest.raises(NotFound, match="ranker_tiny"):
        create_adapter("ranker", "tiered", settings)
    with pytest.raises(ConfigurationError, match="ranker_tiny"):
        await services.build_application(settings, ["rank"])


async def test_unreachable_full_model_opens_the_breaker_and_casual_users_keep_the_small_model(
    tmp_path: Path, repository: Path
) -> None:
    settings = settings_for(
        tmp_path,
        repository,
        tiered_full_backend="triton",
        triton_url=f"127.0.0.1:{free_port()}",  # nothing listens: UNAVAILABLE
        breaker_failure_threshold=2,
        timeout_ms=2_000,
    )
    application = await services.build_application(settings, ["rank"])
    await application.start()
    components = application.components
    assert components is not None
    try:
        store = components.feature_store
        now = dt.datetime.now(dt.UTC)
        await store.put_user_embedding(
            "engaged", UserEmbedding(np.array([1, 0, 0], np.float32), "e", now)
        )
        await store.put_item_features(
            {
                item: ItemFeatures("Drama", 0.1 * item, 0.5, np.array([1, 0, 0], np.float32))
                for item in range(1, 5)
            }
        )
        candidates = [(item, 0.5) for item in range(1, 5)]
        options = ClientOptions(target=application.address, timeout_seconds=10, retry=None)
        async with AsyncRecsysClient(options) as client:
            answers = []
            for _ in range(2):
                answers.append(await client.rank("engaged", candidates))  # activity 1: full
                casual = await client.rank("casual", candidates)  # no embedding: small
                assert casual.backend == common_pb2.RANKING_BACKEND_MODEL
                assert casual.model_version == "ranker_small:2"
            chain = components.ranking_chain
            assert chain is not None
            assert chain.breaker.state is BreakerState.OPEN
            # The in-process copy of the full model answers for engaged users meanwhile.
            for answer in answers:
                assert answer.backend == common_pb2.RANKING_BACKEND_CPU_MODEL
                assert answer.model_version == "ranker:2"
        registry = components.registry
        for tier, count in (("full", 2.0), ("small", 2.0)):
            value = registry.get_sample_value("recsys_rank_tier_requests_total", {"tier": tier})
            assert value == count
    finally:
        await application.shutdown()
