"""RankService's candidate-source columns and user history size: validated field by field,
decoded into the ranking features, and sent by Recommend's remote scorer in both request
layouts so that a Rank service over gRPC ranks exactly as one in process."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import numpy.typing as npt
import pytest

from recsys import services
from recsys.adapters.remote import GrpcScorer
from recsys.domain.candidates import SourceKind, SourceList, merge_sources
from recsys.domain.ranking import RANKING_FEATURES, RankingOutcome
from recsys.domain.requests import DeviceType, RequestContext
from recsys.grpc_server.app import GrpcApplication
from recsys.ports.features import ItemFeatures, UserEmbedding
from recsys.v1 import common_pb2
from recsys.v1 import rank_service_pb2 as rank_pb2
from recsys.v1 import rank_service_pb2_grpc as rank_grpc
from recsys_client import RecsysClientError, _requests
from tests.servicers.test_rank import rank_settings

# Retrieval finds 40, 11, 12, 13; the neighbours 12, 30, 40; popularity 31, 11. Merged in
# source order: 40, 11, 12, 13, 30, 31.
MERGED = merge_sources(
    [
        SourceList.of(SourceKind.RETRIEVAL, [40, 11, 12, 13], [0.9, 0.8, 0.6, 0.3]),
        SourceList.of(SourceKind.NEIGHBOURS, [12, 30, 40], [2.5, 1.5, 0.5]),
        SourceList.of(SourceKind.POPULARITY, [31, 11]),
    ]
)
ITEM_IDS = MERGED.item_ids
CANDIDATE_SCORES = np.array([0.9, 0.8, 0.6, 0.3, 0.1, 0.05], np.float32)
HISTORY_SIZE = 17
CONTEXT = RequestContext(
    device_type=DeviceType.WEB, request_time=dt.datetime(2026, 1, 5, 18, 0, tzinfo=dt.UTC)
)
SOURCE_COLUMNS = (
    "neighbour_score",
    "retrieval_rank_score",
    "neighbour_rank_score",
    "popularity_rank_score",
    "user_activity",
)


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[GrpcApplication]:
    application = await services.build_application(rank_settings(tmp_path), ["rank"])
    await application.start()
    assert application.components is not None
    store = application.components.feature_store
    now = dt.datetime.now(dt.UTC)
    await store.put_user_embedding("u1", UserEmbedding(np.array([1, 0, 0], np.float32), "e", now))
    rng = np.random.default_rng(5)
    await store.put_item_features(
        {
            item_id: ItemFeatures(
                "Drama", float(rng.random()), float(rng.random()), rng.random(3, np.float32)
            )
            for item_id in ITEM_IDS.tolist()
        }
    )
    yield application
    await application.shutdown()


def record_features(
    app: GrpcApplication, monkeypatch: pytest.MonkeyPatch
) -> list[npt.NDArray[np.float32]]:
    """Every feature matrix the Rank service's ranking chain is asked to score."""
    assert app.components is not None
    chain = app.components.ranking_chain
    assert chain is not None
    rank = chain.rank
    seen: list[npt.NDArray[np.float32]] = []

    async def recording(features: npt.NDArray[np.float32]) -> RankingOutcome:
        seen.append(features.copy())
        return await rank(features)

    monkeypatch.setattr(chain, "rank", recording)
    return seen


def column(features: npt.NDArray[np.float32], name: str) -> list[float]:
    values: list[float] = features[:, RANKING_FEATURES.index(name)].tolist()
    return values


@pytest.mark.parametrize("layout", ["columns", "sub-messages"])
async def test_sources_and_history_size_reach_the_features_over_grpc(
    app: GrpcApplication, monkeypatch: pytest.MonkeyPatch, layout: str
) -> None:
    seen = record_features(app, monkeypatch)
    assert app.components is not None
    local_scorer = app.components.candidate_scorer
    assert local_scorer is not None
    local = await local_scorer.score(
        "u1",
        ITEM_IDS,
        CANDIDATE_SCORES,
        CONTEXT,
        sources=MERGED.columns,
        history_size=HISTORY_SIZE,
    )
    await local_scorer.score("u1", ITEM_IDS, CANDIDATE_SCORES, CONTEXT)
    scorer = GrpcScorer(app.address, timeout_seconds=5)
    if layout == "sub-messages":
        # As after an older Rank server refused the columns (tests/adapters covers the switch).
        scorer._sub_messages_until = math.inf
    try:
        remote = await scorer.score(
            "u1",
            ITEM_IDS,
            CANDIDATE_SCORES,
            CONTEXT,
            sources=MERGED.columns,
            history_size=HISTORY_SIZE,
        )
    finally:
        await scorer.close()
    in_process, without_sources, over_grpc = seen
    # Over gRPC, in either layout, the model sees the very matrix it sees in process.
    np.testing.assert_array_equal(over_grpc, in_process)
    assert remote.item_ids.tolist() == local.item_ids.tolist()
    assert remote.scores.tolist() == local.scores.tolist()
    # The sources' features, candidate by candidate (40, 11, 12, 13, 30, 31).
    np.testing.assert_allclose(column(over_grpc, "neighbour_score"), [0.5, 0, 2.5, 0, 1.5, 0])
    np.testing.assert_allclose(
        column(over_grpc, "retrieval_rank_score"), [1, 1 / 2, 1 / 3, 1 / 4, 0, 0], rtol=1e-6
    )
    np.testing.assert_allclose(
        column(over_grpc, "neighbour_rank_score"), [1 / 3, 0, 1, 0, 1 / 2, 0], rtol=1e-6
    )
    np.testing.assert_allclose(
        column(over_grpc, "popularity_rank_score"), [0, 1 / 2, 0, 0, 0, 1], rtol=1e-6
    )
    np.testing.assert_allclose(
        column(over_grpc, "user_activity"), [math.log1p(HISTORY_SIZE)] * 6, rtol=1e-6
    )
    # Without them those features are zero and the rest of the matrix is unchanged.
    indices = [RANKING_FEATURES.index(name) for name in SOURCE_COLUMNS]
    assert not without_sources[:, indices].any()
    others = [index for index in range(len(RANKING_FEATURES)) if index not in indices]
    np.testing.assert_array_equal(without_sources[:, others], over_grpc[:, others])


async def test_a_request_without_sources_ranks_as_before(
    app: GrpcApplication, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = record_features(app, monkeypatch)
    scorer = GrpcScorer(app.address, timeout_seconds=5)
    try:
        await scorer.score("u1", ITEM_IDS, CANDIDATE_SCORES, CONTEXT, history_size=0)
        await scorer.score("u1", ITEM_IDS, CANDIDATE_SCORES, CONTEXT)
    finally:
        await scorer.close()
    indices = [RANKING_FEATURES.index(name) for name in SOURCE_COLUMNS]
    # A history size of 0 is sent (log1p(0) = 0), as is its absence: both read as zeros.
    for features in seen:
        assert not features[:, indices].any()
    np.testing.assert_array_equal(seen[0], seen[1])


def source_column(
    source: int = common_pb2.CANDIDATE_SOURCE_RETRIEVAL,
    scores: list[float] | None = None,
    positions: list[int] | None = None,
) -> rank_pb2.CandidateSourceColumn:
    return rank_pb2.CandidateSourceColumn(
        source=source,  # type: ignore[arg-type]
        scores=[0.5, 0.25, 0.0] if scores is None else scores,
        positions=[0, 1, -1] if positions is None else positions,
    )


def request_in(layout: str, **fields: object) -> rank_pb2.RankRequest:
    values: dict[str, object] = {"user_id": "u1"}
    if layout == "columns":
        values.update(candidate_item_ids=[40, 11, 12], candidate_scores=[0.9, 0.8, 0.6])
    else:
        values["candidates"] = [
            rank_pb2.RankCandidate(item_id=item_id, candidate_score=score)
            for item_id, score in ((40, 0.9), (11, 0.8), (12, 0.6))
        ]
    values.update(fields)
    return rank_pb2.RankRequest(**values)  # type: ignore[arg-type]


BAD_FIELDS: list[tuple[dict[str, object], list[str]]] = [
    # One score or position too few, or too many.
    ({"candidate_sources": [source_column(scores=[0.5, 0.25])]}, ["candidate_sources[0].scores"]),
    (
        {"candidate_sources": [source_column(positions=[0, 1, 2, 3])]},
        ["candidate_sources[0].positions"],
    ),
    # A column without its source.
    (
        {"candidate_sources": [source_column(common_pb2.CANDIDATE_SOURCE_UNSPECIFIED)]},
        ["candidate_sources[0].source"],
    ),
    # The same source twice.
    (
        {
            "candidate_sources": [
                source_column(common_pb2.CANDIDATE_SOURCE_NEIGHBOURS),
                source_column(common_pb2.CANDIDATE_SOURCE_RETRIEVAL),
                source_column(common_pb2.CANDIDATE_SOURCE_NEIGHBOURS),
            ]
        },
        ["candidate_sources[2].source"],
    ),
    (
        {"candidate_sources": [source_column(positions=[0, -2, 1])]},
        ["candidate_sources[0].positions"],
    ),
    (
        {"candidate_sources": [source_column(scores=[0.5, float("nan"), 0.0])]},
        ["candidate_sources[0].scores"],
    ),
    ({"user_history_size": -1}, ["user_history_size"]),
    # Every problem is named at once.
    (
        {
            "candidate_sources": [
                source_column(scores=[0.5]),
                source_column(common_pb2.CANDIDATE_SOURCE_POPULARITY, positions=[-3, 0, 1]),
            ],
            "user_history_size": -5,
        },
        ["candidate_sources[0].scores", "candidate_sources[1].positions", "user_history_size"],
    ),
]


@pytest.mark.parametrize("layout", ["columns", "sub-messages"])
async def test_a_source_this_server_does_not_know_is_ignored(
    app: GrpcApplication, layout: str
) -> None:
    # A newer Recommend during a rolling upgrade: its new source has no feature here.
    async with grpc.aio.insecure_channel(app.address) as channel:
        stub = rank_grpc.RankServiceStub(channel)
        known = await stub.Rank(request_in(layout), timeout=5)
        with_unknown = await stub.Rank(
            request_in(layout, candidate_sources=[source_column(99)]), timeout=5
        )
    assert with_unknown == known


@pytest.mark.parametrize("layout", ["columns", "sub-messages"])
@pytest.mark.parametrize(("fields", "named"), BAD_FIELDS)
async def test_bad_source_columns_and_history_sizes_name_the_field(
    app: GrpcApplication, layout: str, fields: dict[str, object], named: list[str]
) -> None:
    async with grpc.aio.insecure_channel(app.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await rank_grpc.RankServiceStub(channel).Rank(request_in(layout, **fields), timeout=5)
    error = RecsysClientError.from_call(caught.value)
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert [violation.field for violation in error.field_violations] == named
    last_name = named[0].rsplit(".", 1)[-1].split("[")[0].upper()
    assert error.reason == f"{last_name}_INVALID"


@pytest.mark.parametrize("layout", ["columns", "sub-messages"])
async def test_valid_source_columns_are_accepted_in_either_layout(
    app: GrpcApplication, layout: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = record_features(app, monkeypatch)
    request = request_in(
        layout,
        candidate_sources=[
            source_column(common_pb2.CANDIDATE_SOURCE_NEIGHBOURS, [0.0, 3.0, 0.0], [-1, 0, -1])
        ],
        user_history_size=0,
    )
    async with grpc.aio.insecure_channel(app.address) as channel:
        response = await rank_grpc.RankServiceStub(channel).Rank(request, timeout=5)
    assert sorted(item.item_id for item in response.items) == [11, 12, 40]
    (features,) = seen
    assert column(features, "neighbour_score") == [0.0, 3.0, 0.0]
    assert column(features, "neighbour_rank_score") == [0.0, 1.0, 0.0]
    assert column(features, "retrieval_rank_score") == [0.0, 0.0, 0.0]


def test_the_client_library_sends_sources_and_history_size_when_given() -> None:
    sources = [source_column(common_pb2.CANDIDATE_SOURCE_POPULARITY)]
    request = _requests.rank_request(
        "u1", [(40, 0.9), (11, 0.8), (12, 0.6)], None, sources, user_history_size=4
    )
    assert list(request.candidate_sources) == sources
    assert request.HasField("user_history_size")
    assert request.user_history_size == 4
    bare = _requests.rank_request("u1", [(40, 0.9)], None)
    assert not bare.candidate_sources
    assert not bare.HasField("user_history_size")
