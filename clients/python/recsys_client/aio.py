"""Asyncio client of the recsys.v1 API (grpc.aio); same surface as `RecsysClient`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from types import TracebackType
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from recsys.v1 import (
    common_pb2,
    ingest_service_pb2,
    ingest_service_pb2_grpc,
    interaction_event_pb2,
    rank_service_pb2,
    rank_service_pb2_grpc,
    recommend_service_pb2,
    recommend_service_pb2_grpc,
    retrieve_service_pb2,
    retrieve_service_pb2_grpc,
)
from recsys_client import _requests
from recsys_client.errors import RecsysClientError
from recsys_client.options import ClientOptions, check_token_transport

ResponseT = TypeVar("ResponseT")


class AsyncRecsysClient:
    """Non-blocking client; create and use it inside one running event loop."""

    def __init__(
        self, options: ClientOptions | None = None, *, channel: grpc.aio.Channel | None = None
    ) -> None:
        self.options = options or ClientOptions()
        if channel is None:
            check_token_transport(self.options)
            credentials = _requests.channel_credentials(self.options)
            channel_options = self.options.channel_options()
            channel = (
                grpc.aio.secure_channel(self.options.target, credentials, channel_options)
                if credentials is not None
                else grpc.aio.insecure_channel(self.options.target, channel_options)
            )
        self.channel = channel
        self.recommend_stub = recommend_service_pb2_grpc.RecommendServiceStub(channel)
        self.ingest_stub = ingest_service_pb2_grpc.IngestServiceStub(channel)
        self.retrieve_stub = retrieve_service_pb2_grpc.RetrieveServiceStub(channel)
        self.rank_stub = rank_service_pb2_grpc.RankServiceStub(channel)
        self.health_stub = health_pb2_grpc.HealthStub(channel)

    async def _call(
        self,
        method: Callable[..., Awaitable[ResponseT]],
        request: Any,
        timeout: float | None,
        request_id: str | None,
    ) -> ResponseT:
        try:
            return await method(
                request,
                timeout=timeout if timeout is not None else self.options.timeout_seconds,
                metadata=self.options.call_metadata(request_id),
            )
        except grpc.aio.AioRpcError as error:
            raise RecsysClientError.from_call(error) from error

    async def recommend(
        self,
        user_id: str,
        *,
        surface: str = "homepage",
        limit: int = 20,
        context: common_pb2.RequestContext | None = None,
        excluded_item_ids: Iterable[int] = (),
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> recommend_service_pb2.RecommendResponse:
        request = _requests.recommend_request(user_id, surface, limit, context, excluded_item_ids)
        return await self._call(self.recommend_stub.Recommend, request, timeout, request_id)

    async def delete_user_data(
        self, user_id: str, *, timeout: float | None = None, request_id: str | None = None
    ) -> recommend_service_pb2.DeleteUserDataResponse:
        request = recommend_service_pb2.DeleteUserDataRequest(user_id=user_id)
        return await self._call(self.recommend_stub.DeleteUserData, request, timeout, request_id)

    async def record_interactions(
        self,
        events: Iterable[interaction_event_pb2.InteractionEvent],
        *,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> ingest_service_pb2.RecordInteractionsResponse:
        request = _requests.record_interactions_request(events)
        return await self._call(self.ingest_stub.RecordInteractions, request, timeout, request_id)

    async def retrieve(
        self,
        *,
        user_id: str | None = None,
        query_vector: Iterable[float] | None = None,
        embedding_version: str = "",
        k: int = 1000,
        require_all_shards: bool = False,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> retrieve_service_pb2.RetrieveResponse:
        request = _requests.retrieve_request(
            user_id=user_id,
            query_vector=query_vector,
            embedding_version=embedding_version,
            k=k,
            require_all_shards=require_all_shards,
        )
        return await self._call(self.retrieve_stub.Retrieve, request, timeout, request_id)

    async def rank(
        self,
        user_id: str,
        candidates: Iterable[tuple[int, float]],
        *,
        context: common_pb2.RequestContext | None = None,
        candidate_sources: Iterable[rank_service_pb2.CandidateSourceColumn] = (),
        user_history_size: int | None = None,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> rank_service_pb2.RankResponse:
        """`candidate_sources`: what each candidate source said about the candidates (one score
        and one position per candidate, in the order of `candidates`); `user_history_size`: the
        number of items in the user's history. Both optional ranking features."""
        request = _requests.rank_request(
            user_id, candidates, context, candidate_sources, user_history_size
        )
        return await self._call(self.rank_stub.Rank, request, timeout, request_id)

    async def check_health(self, service: str = "", *, timeout: float | None = None) -> str:
        """The health status name of a service ("" for the whole server): SERVING, ..."""
        response = await self._call(
            self.health_stub.Check, health_pb2.HealthCheckRequest(service=service), timeout, None
        )
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> AsyncRecsysClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()
