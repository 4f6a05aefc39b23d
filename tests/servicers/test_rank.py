"""RankService over gRPC with the in-process ONNX model (the embedded default)."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from recsys import services
from recsys.grpc_server.app import GrpcApplication
from recsys.ports.features import ItemFeatures, UserEmbedding
from recsys.v1 import common_pb2
from recsys_client import AsyncRecsysClient, ClientOptions, RecsysClientError
from tests.conftest import make_settings

ROOT = Path(__file__).resolve().parents[2]


def rank_settings(folder: Path, **rank: object):  # type: ignore[no-untyped-def]
    values: dict[str, object] = {
        "model_repository": str(ROOT / "triton_models"),
        "reload_poll_seconds": 0,
    }
    values.update(rank)
    return make_settings(folder, rank=values, logging={"access_log": False})


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[GrpcApplication]:
    application = await services.build_application(rank_settings(tmp_path), ["rank"])
    await application.start()
    yield application
    await application.shutdown()


async def test_rank_scores_sorts_and_names_the_backend(app: GrpcApplication) -> None:
    store = app.components.feature_store
    now = dt.datetime.now(dt.UTC)
    await store.put_user_embedding("u1", UserEmbedding(np.array([1, 0, 0], np.float32), "e", now))
    await store.put_item_features(
        {
            10: ItemFeatures("Action", 0.1, 0.5, np.array([1, 0, 0], np.float32)),
            11: ItemFeatures("Drama", 0.9, 0.5, np.array([-1, 0, 0], np.float32)),
            12: ItemFeatures("Comedy", 0.5, 0.5, np.array([0, 1, 0], np.float32)),
        }
    )
    async with AsyncRecsysClient(ClientOptions(target=app.address, timeout_seconds=5)) as client:
        response = await client.rank("u1", [(10, 0.5), (11, 0.5), (12, 0.5), (13, 0.9)])
    assert response.backend == common_pb2.RANKING_BACKEND_MODEL
    assert response.model_version == "ranker:1"
    assert response.default_features  # item 13 has no features: scored on defaults, and said so
    scores = [item.score for item in response.items]
    assert scores == sorted(scores, reverse=True)
    assert {item.item_id for item in response.items} == {10, 11, 12, 13}
    # Item 10 matches the user's taste (dot product 1) and beats item 11 (dot -1).
    order = [item.item_id for item in response.items]
    assert order.index(10) < order.index(11)


@pytest.mark.parametrize(
    ("candidates", "user_id", "fields"),
    [
        # The client sends sub-messages (test_rank_columns.py: the columns' violations).
        ([], "u1", ["candidates"]),
        ([(1, 0.5), (1, 0.4)], "u1", ["candidates"]),
        ([(-1, 0.5)], "u1", ["candidates"]),
        ([(1, float("nan"))], "u1", ["candidates"]),
        ([(1, 0.5)], "", ["user_id"]),
    ],
)
async def test_bad_requests_name_the_field(
    app: GrpcApplication, candidates: list[tuple[int, float]], user_id: str, fields: list[str]
) -> None:
    async with AsyncRecsysClient(ClientOptions(target=app.address, timeout_seconds=5)) as client:
        with pytest.raises(RecsysClientError) as caught:
            await client.rank(user_id, candidates)
    assert caught.value.code.name == "INVALID_ARGUMENT"
    assert [v.field for v in caught.value.field_violations] == fields


async def test_rule_backend_when_configured(tmp_path: Path) -> None:
    settings = rank_settings(tmp_path, backend="rule")
    application = await services.build_application(settings, ["rank"])
    await application.start()
    try:
        async with AsyncRecsysClient(ClientOptions(target=application.address)) as client:
            response = await client.rank("u1", [(1, 0.1), (2, 0.9)])
        assert [item.item_id for item in response.items] == [2, 1]
        assert response.backend == common_pb2.RANKING_BACKEND_RULE_FALLBACK
        assert response.model_version == ""
    finally:
        await application.shutdown()


async def test_a_feature_store_outage_scores_defaults_and_says_so(tmp_path: Path) -> None:
    # Redis refused (nothing listens on port 1): the model still scores, on default features.
    settings = make_settings(
        tmp_path,
        rank={"model_repository": str(ROOT / "triton_models"), "reload_poll_seconds": 0},
        features={"store": "redis"},
        redis={"url": "redis://127.0.0.1:1/0"},
        logging={"access_log": False},
    )
    application = await services.build_application(settings, ["rank"])
    try:
        await application.start()
        options = ClientOptions(target=application.address, timeout_seconds=5)
        async with AsyncRecsysClient(options) as client:
            response = await client.rank("u1", [(10, 0.9), (11, 0.1)])
        # Recommend's remote scorer (the distributed layout) carries the flag on.
        from recsys.adapters.remote import GrpcScorer
        from recsys.domain.requests import RequestContext

        scorer = GrpcScorer(application.address, timeout_seconds=5)
        try:
            scored = await scorer.score(
                "u1", np.array([10, 11]), np.array([0.9, 0.1], np.float32), RequestContext()
            )
        finally:
            await scorer.close()
    finally:
        await application.shutdown()
    assert scored.default_features
    assert response.backend == common_pb2.RANKING_BACKEND_MODEL
    assert response.default_features
    assert [item.item_id for item in response.items] == [10, 11]  # the retrieval score decides
