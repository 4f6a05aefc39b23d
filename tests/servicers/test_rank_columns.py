"""RankService's packed-column layout: columns in and out, the sub-messages still answered, the
two layouts never mixed, and Recommend's remote scorer on the columns."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from recsys import services
from recsys.adapters.remote import GrpcScorer
from recsys.domain.ranking import Backend
from recsys.domain.requests import DeviceType, RequestContext
from recsys.domain.scoring import ScoredCandidates
from recsys.grpc_server.app import GrpcApplication
from recsys.ports.features import ItemFeatures, UserEmbedding
from recsys.v1 import common_pb2
from recsys.v1 import rank_service_pb2 as rank_pb2
from recsys.v1 import rank_service_pb2_grpc as rank_grpc
from recsys.v1 import retrieve_service_pb2 as retrieve_pb2
from recsys_client import RecsysClientError, _requests
from tests.servicers.test_rank import rank_settings

COLUMNS = retrieve_pb2.CANDIDATE_LAYOUT_COLUMNS
ITEM_IDS = [40, 11, 12, 13, 30, 31, 32, 33]
SCORES = [0.5, 0.9, 0.5, 0.1, 0.7, 0.7, 0.2, 0.5]


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[GrpcApplication]:
    application = await services.build_application(rank_settings(tmp_path), ["rank"])
    await application.start()
    store = application.components.feature_store
    now = dt.datetime.now(dt.UTC)
    await store.put_user_embedding("u1", UserEmbedding(np.array([1, 0, 0], np.float32), "e", now))
    rng = np.random.default_rng(3)
    await store.put_item_features(
        {
            item_id: ItemFeatures(
                "Drama", float(rng.random()), float(rng.random()), rng.random(3, np.float32)
            )
            for item_id in ITEM_IDS[:6]
        }
    )
    yield application
    await application.shutdown()


async def rank(app: GrpcApplication, request: rank_pb2.RankRequest) -> rank_pb2.RankResponse:
    async with grpc.aio.insecure_channel(app.address) as channel:
        response: rank_pb2.RankResponse = await rank_grpc.RankServiceStub(channel).Rank(
            request, timeout=5
        )
        return response


def old_layout() -> rank_pb2.RankRequest:
    return rank_pb2.RankRequest(
        user_id="u1",
        candidates=[
            rank_pb2.RankCandidate(item_id=item_id, candidate_score=score)
            for item_id, score in zip(ITEM_IDS, SCORES, strict=True)
        ],
    )


def columns(**fields: object) -> rank_pb2.RankRequest:
    values: dict[str, object] = {
        "user_id": "u1",
        "candidate_item_ids": ITEM_IDS,
        "candidate_scores": SCORES,
    }
    values.update(fields)
    return rank_pb2.RankRequest(**values)  # type: ignore[arg-type]


async def test_columns_in_and_out_match_the_sub_messages(app: GrpcApplication) -> None:
    old = await rank(app, old_layout())
    packed = await rank(app, columns(response_layout=COLUMNS))
    columns_in_messages_out = await rank(app, columns())
    # An old client's request is answered in the old layout only.
    assert len(old.items) == len(ITEM_IDS)
    assert (len(old.item_ids), len(old.scores)) == (0, 0)
    # COLUMNS fills the columns only, with the same items, order and float32 scores.
    assert not packed.items
    assert list(packed.item_ids) == [item.item_id for item in old.items]
    assert list(packed.scores) == [item.score for item in old.items]
    assert sorted(packed.item_ids) == sorted(ITEM_IDS)
    # The request's layout and the response's are independent.
    assert list(columns_in_messages_out.items) == list(old.items)
    for response in (packed, columns_in_messages_out):
        assert (response.backend, response.model_version) == (old.backend, old.model_version)
        assert response.default_features == old.default_features
    assert old.backend == common_pb2.RANKING_BACKEND_MODEL
    assert old.default_features  # items 32 and 33 have no features


@pytest.mark.parametrize(
    ("request_message", "fields"),
    [
        # Both layouts at once.
        (
            rank_pb2.RankRequest(
                user_id="u1",
                candidates=[rank_pb2.RankCandidate(item_id=1, candidate_score=0.5)],
                candidate_item_ids=[2],
                candidate_scores=[0.5],
            ),
            ["candidate_item_ids"],
        ),
        (
            rank_pb2.RankRequest(
                user_id="u1",
                candidates=[rank_pb2.RankCandidate(item_id=1, candidate_score=0.5)],
                candidate_scores=[0.5],
            ),
            ["candidate_item_ids"],
        ),
        # Columns of different lengths.
        (columns(candidate_scores=SCORES[:-1]), ["candidate_scores"]),
        (columns(candidate_scores=[]), ["candidate_scores", "candidate_item_ids"]),
        (columns(candidate_item_ids=[5, 5], candidate_scores=[0.1, 0.2]), ["candidate_item_ids"]),
        (columns(candidate_item_ids=[-5], candidate_scores=[0.1]), ["candidate_item_ids"]),
        (columns(candidate_item_ids=[5], candidate_scores=[float("inf")]), ["candidate_scores"]),
    ],
)
async def test_mixed_or_mismatched_columns_name_the_field(
    app: GrpcApplication, request_message: rank_pb2.RankRequest, fields: list[str]
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await rank(app, request_message)
    error = RecsysClientError.from_call(caught.value)
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert [violation.field for violation in error.field_violations] == fields


async def test_remote_scorer_gets_the_servers_order_and_sends_the_context(
    app: GrpcApplication, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A context unlike the defaults: the device and hour features must reach the Rank service.
    context = RequestContext(
        device_type=DeviceType.TV,
        country="DE",
        locale="de-DE",
        request_time=dt.datetime(2026, 1, 5, 3, 30, tzinfo=dt.UTC),
        category="Drama",
    )
    local_scorer = app.components.candidate_scorer
    local = await local_scorer.score(
        "u1", np.array(ITEM_IDS, np.int64), np.array(SCORES, np.float32), context
    )
    received: list[RequestContext] = []
    score = local_scorer.score

    async def recording(
        user_id: str, item_ids: Any, scores: Any, given: RequestContext, **features: Any
    ) -> ScoredCandidates:
        received.append(given)
        return await score(user_id, item_ids, scores, given, **features)

    monkeypatch.setattr(local_scorer, "score", recording)
    scorer = GrpcScorer(app.address, timeout_seconds=5)
    try:
        scored = await scorer.score(
            "u1", np.array(ITEM_IDS, np.int64), np.array(SCORES, np.float32), context
        )
    finally:
        await scorer.close()
    assert received == [context]
    assert scored.backend is Backend.MODEL
    assert scored.item_ids.tolist() == local.item_ids.tolist()
    assert scored.scores.tolist() == local.scores.tolist()
    assert scored.default_features


def test_the_client_library_sends_sub_messages_every_rank_server_reads() -> None:
    request = _requests.rank_request("u1", zip(ITEM_IDS, SCORES, strict=True), None)
    assert not request.candidate_item_ids
    assert [candidate.item_id for candidate in request.candidates] == ITEM_IDS
    assert [candidate.candidate_score for candidate in request.candidates] == [
        np.float32(score) for score in SCORES
    ]
    assert request.response_layout == retrieve_pb2.CANDIDATE_LAYOUT_UNSPECIFIED
