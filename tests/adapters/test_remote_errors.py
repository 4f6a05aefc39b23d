"""The gRPC adapters against real servers on loopback port 0: a dependency's refusal of our
request surfaces as such (InvalidArgument, FailedPrecondition with its reason), its outage
degrades (Unavailable; Recommend's remote scorer falls back to the rule order)."""

from __future__ import annotations

import socket

import grpc
import numpy as np
import pytest

from recsys.adapters.remote import GrpcCandidateSource, GrpcScorer
from recsys.adapters.shards.grpc import GrpcShardClient
from recsys.domain.candidates import SourceKind, SourceList, merge_sources
from recsys.domain.ranking import Backend
from recsys.domain.requests import RequestContext
from recsys.domain.retrieval import RetrievalQuery
from recsys.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    RecsysError,
    Unavailable,
)
from recsys.grpc_server.app import GrpcApplication, ServiceBinding
from recsys.v1 import (
    common_pb2,
    index_shard_service_pb2,
    index_shard_service_pb2_grpc,
    rank_service_pb2,
    rank_service_pb2_grpc,
    retrieve_service_pb2,
    retrieve_service_pb2_grpc,
)
from tests.conftest import StartApp


class ScriptedDependency(
    retrieve_service_pb2_grpc.RetrieveServiceServicer,
    rank_service_pb2_grpc.RankServiceServicer,
    index_shard_service_pb2_grpc.IndexShardServiceServicer,
):
    """Retrieve, Rank and a shard's Search on one server: each raises `failure` when set (the
    server's error interceptor answers it with google.rpc.Status details), or aborts with
    `plain_code` and no details (as a server that is not recsys would), or answers."""

    def __init__(self) -> None:
        self.failure: RecsysError | None = None
        self.plain_code: grpc.StatusCode | None = None
        # Rank as a server built before the packed columns: it reads `candidates` only (a
        # request in columns looks empty to it) and answers `items`.
        self.before_columns = False
        self.rank_layouts: list[str] = []
        self.rank_requests: list[rank_service_pb2.RankRequest] = []

    async def _fail_if_scripted(self, context: grpc.aio.ServicerContext) -> None:
        if self.failure is not None:
            raise self.failure
        if self.plain_code is not None:
            await context.abort(self.plain_code, "scripted")

    async def Retrieve(  # noqa: N802
        self, request: retrieve_service_pb2.RetrieveRequest, context: grpc.aio.ServicerContext
    ) -> retrieve_service_pb2.RetrieveResponse:
        await self._fail_if_scripted(context)
        response = retrieve_service_pb2.RetrieveResponse(embedding_version="emb-1")
        response.candidates.add(item_id=7, score=0.5, shard_id=0)
        return response

    async def Rank(  # noqa: N802
        self, request: rank_service_pb2.RankRequest, context: grpc.aio.ServicerContext
    ) -> rank_service_pb2.RankResponse:
        await self._fail_if_scripted(context)
        response = rank_service_pb2.RankResponse(model_version="ranker:1")
        self.rank_layouts.append("columns" if request.candidate_item_ids else "sub-messages")
        self.rank_requests.append(request)
        if self.before_columns:
            if not request.candidates:
                raise InvalidArgument([FieldViolation("candidates", "must be 1 to 5000, got 0")])
            for candidate in request.candidates:
                response.items.add(item_id=candidate.item_id, score=candidate.candidate_score)
            return response
        # GrpcScorer sends and asks for packed columns.
        response.item_ids.extend(request.candidate_item_ids)
        response.scores.extend(score for score in request.candidate_scores)
        return response

    async def Search(  # noqa: N802
        self, request: index_shard_service_pb2.SearchRequest, context: grpc.aio.ServicerContext
    ) -> index_shard_service_pb2.SearchResponse:
        await self._fail_if_scripted(context)
        return index_shard_service_pb2.SearchResponse()


def _service_name(module: object, name: str) -> str:
    return str(module.DESCRIPTOR.services_by_name[name].full_name)  # type: ignore[attr-defined]


@pytest.fixture
async def dependency(start_app: StartApp) -> tuple[ScriptedDependency, GrpcApplication]:
    scripted = ScriptedDependency()
    bindings = [
        ServiceBinding(
            _service_name(retrieve_service_pb2, "RetrieveService"),
            lambda server: retrieve_service_pb2_grpc.add_RetrieveServiceServicer_to_server(
                scripted, server
            ),
        ),
        ServiceBinding(
            _service_name(rank_service_pb2, "RankService"),
            lambda server: rank_service_pb2_grpc.add_RankServiceServicer_to_server(
                scripted, server
            ),
        ),
        ServiceBinding(
            _service_name(index_shard_service_pb2, "IndexShardService"),
            lambda server: index_shard_service_pb2_grpc.add_IndexShardServiceServicer_to_server(
                scripted, server
            ),
        ),
    ]
    return scripted, await start_app(bindings)


QUERY = RetrievalQuery(
    vector=np.ones(4, np.float32), embedding_version="emb-1", k=10, excluded_item_ids=frozenset()
)
INVALID = InvalidArgument([FieldViolation("k", "must be between 1 and 1000, got 0")])


async def test_invalid_argument_surfaces_and_unavailable_degrades(
    dependency: tuple[ScriptedDependency, GrpcApplication],
) -> None:
    scripted, app = dependency
    source = GrpcCandidateSource(app.address, timeout_seconds=5)
    try:
        assert (await source.retrieve(QUERY)).item_ids.tolist() == [7]

        scripted.failure = INVALID
        with pytest.raises(InvalidArgument) as refused:
            await source.retrieve(QUERY)
        assert refused.value.violations == INVALID.violations
        assert refused.value.message.startswith("retrieve service answered INVALID_ARGUMENT")
        # The dependency's request id, for finding its log lines.
        assert len(refused.value.metadata["dependency_request_id"]) == 32

        scripted.failure = Unavailable("no shard answered", reason="NO_SHARDS")
        with pytest.raises(Unavailable) as down:
            await source.retrieve(QUERY)
        assert down.value.reason == "NO_SHARDS"
    finally:
        await source.close()


async def test_the_version_mismatch_keeps_its_reason(
    dependency: tuple[ScriptedDependency, GrpcApplication],
) -> None:
    scripted, app = dependency
    scripted.failure = FailedPrecondition(
        "the query uses embedding version 'emb-0'",
        reason="EMBEDDING_VERSION_MISMATCH",
        metadata={"index_embedding_version": "emb-1"},
    )
    source = GrpcCandidateSource(app.address, timeout_seconds=5)
    try:
        with pytest.raises(FailedPrecondition) as caught:
            await source.retrieve(QUERY)
    finally:
        await source.close()
    assert caught.value.reason == "EMBEDDING_VERSION_MISMATCH"
    assert caught.value.metadata["index_embedding_version"] == "emb-1"


async def test_codes_without_details_follow_the_same_rule(
    dependency: tuple[ScriptedDependency, GrpcApplication],
) -> None:
    scripted, app = dependency
    source = GrpcCandidateSource(app.address, timeout_seconds=5)
    try:
        for code, expected in [
            (grpc.StatusCode.INVALID_ARGUMENT, InvalidArgument),
            (grpc.StatusCode.NOT_FOUND, FailedPrecondition),
            (grpc.StatusCode.INTERNAL, Unavailable),
            (grpc.StatusCode.RESOURCE_EXHAUSTED, Unavailable),
        ]:
            scripted.plain_code = code
            with pytest.raises(RecsysError) as caught:
                await source.retrieve(QUERY)
            assert type(caught.value) is expected, code
            assert caught.value.reason == code.name
    finally:
        await source.close()


async def test_the_remote_scorer_falls_back_on_outages_only(
    dependency: tuple[ScriptedDependency, GrpcApplication],
) -> None:
    scripted, app = dependency
    scorer = GrpcScorer(app.address, timeout_seconds=5)
    item_ids = np.array([3, 1, 2], np.int64)
    scores = np.array([0.2, 0.9, 0.9], np.float32)
    try:
        scripted.failure = Unavailable("model server down")
        fallback = await scorer.score("u1", item_ids, scores, RequestContext())
        assert fallback.backend is Backend.RULE_FALLBACK
        assert fallback.item_ids.tolist() == [1, 2, 3]  # score, then item id

        scripted.failure = INVALID
        with pytest.raises(InvalidArgument):
            await scorer.score("u1", item_ids, scores, RequestContext())
    finally:
        await scorer.close()


async def test_a_shard_replica_refusal_is_not_an_outage(
    dependency: tuple[ScriptedDependency, GrpcApplication],
) -> None:
    scripted, app = dependency
    replica = GrpcShardClient(app.address)

    async def search() -> None:
        await replica.search(
            np.ones((1, 4), np.float32),
            10,
            embedding_version="emb-1",
            nprobe=None,
            ef_search=None,
            timeout=5,
        )

    try:
        scripted.failure = INVALID
        with pytest.raises(InvalidArgument):
            await search()
        scripted.failure = Unavailable("shard 0 is still loading", reason="SHARD_LOADING")
        with pytest.raises(Unavailable) as loading:
            await search()
        assert loading.value.reason == "SHARD_LOADING"
    finally:
        await replica.close()


async def test_a_dependency_that_is_not_running_is_unavailable() -> None:
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    source = GrpcCandidateSource(f"127.0.0.1:{port}", timeout_seconds=5)
    try:
        with pytest.raises(Unavailable):
            await source.retrieve(QUERY)
    finally:
        await source.close()


async def test_the_remote_scorer_answers_by_rule_when_no_time_is_left() -> None:
    # Out of time before the call (a shared run past its first caller's deadline): the rule
    # order, not DEADLINE_EXCEEDED for everyone waiting on it.
    import numpy as np

    from recsys.adapters.remote import GrpcScorer
    from recsys.deadlines import request_deadline
    from recsys.domain.ranking import Backend
    from recsys.domain.requests import RequestContext

    scorer = GrpcScorer("127.0.0.1:9")
    try:
        with request_deadline(-1.0):
            scored = await scorer.score(
                "u1", np.array([3, 1, 2], np.int64), np.array([0.1, 0.9, 0.5], np.float32),
                RequestContext(),
            )  # fmt: skip
    finally:
        await scorer.close()
    assert scored.backend is Backend.RULE_FALLBACK
    assert scored.item_ids.tolist() == [1, 2, 3]


async def test_the_remote_scorer_speaks_sub_messages_to_a_rank_server_before_columns(
    dependency: tuple[ScriptedDependency, GrpcApplication],
) -> None:
    scripted, app = dependency
    scripted.before_columns = True
    scorer = GrpcScorer(app.address, timeout_seconds=5)
    item_ids = np.array([3, 1, 2], np.int64)
    scores = np.array([0.2, 0.9, 0.5], np.float32)
    try:
        first = await scorer.score("u1", item_ids, scores, RequestContext())
        second = await scorer.score("u1", item_ids, scores, RequestContext())
    finally:
        await scorer.close()
    for scored in (first, second):
        assert scored.backend is Backend.MODEL
        assert scored.item_ids.tolist() == [3, 1, 2]
    # Refused once in columns, said again in sub-messages, which it then keeps to.
    assert scripted.rank_layouts == ["columns", "sub-messages", "sub-messages"]


async def test_the_remote_scorer_sends_the_sources_in_either_layout(
    dependency: tuple[ScriptedDependency, GrpcApplication],
) -> None:
    scripted, app = dependency
    scripted.before_columns = True
    merged = merge_sources(
        [
            SourceList.of(SourceKind.POPULARITY, [2, 3]),
            SourceList.of(SourceKind.RETRIEVAL, [3, 1], [0.9, 0.2]),
        ]
    )
    scores = np.array([0.9, 0.2, 0.1], np.float32)
    scorer = GrpcScorer(app.address, timeout_seconds=5)
    try:
        await scorer.score(
            "u1", merged.item_ids, scores, RequestContext(), sources=merged.columns, history_size=9
        )
        await scorer.score("u1", merged.item_ids, scores, RequestContext())
    finally:
        await scorer.close()
    assert scripted.rank_layouts == ["columns", "sub-messages", "sub-messages"]
    first, retried, bare = scripted.rank_requests
    assert list(first.candidate_item_ids) == merged.item_ids.tolist() == [3, 1, 2]
    assert [candidate.item_id for candidate in retried.candidates] == [3, 1, 2]
    # The same columns, in merge order, whichever layout carried the candidates.
    for request in (first, retried):
        assert [column.source for column in request.candidate_sources] == [
            common_pb2.CANDIDATE_SOURCE_RETRIEVAL,
            common_pb2.CANDIDATE_SOURCE_POPULARITY,
        ]
        retrieval, popularity = request.candidate_sources
        assert list(retrieval.scores) == [np.float32(0.9), np.float32(0.2), 0.0]
        assert list(retrieval.positions) == [0, 1, -1]
        assert list(popularity.scores) == [0.5, 0.0, 1.0]
        assert list(popularity.positions) == [1, -1, 0]
        assert request.HasField("user_history_size")
        assert request.user_history_size == 9
    assert not bare.candidate_sources
    assert not bare.HasField("user_history_size")
