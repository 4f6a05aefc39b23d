"""RecommendService: request validation is live; the pipeline lands with the Recommend issue.

Until then a valid request is answered with UNIMPLEMENTED (reason PIPELINE_NOT_DEPLOYED), and
an invalid one with INVALID_ARGUMENT naming every bad field, as it will be for good.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc

from recsys.domain.requests import validate_recommend_query
from recsys.domain.validation import Violations
from recsys.errors import Unimplemented
from recsys.grpc_server.app import ServiceBinding
from recsys.servicers.convert import recommend_query_from_proto
from recsys.settings import RecommendSettings
from recsys.v1 import recommend_service_pb2, recommend_service_pb2_grpc

if TYPE_CHECKING:
    from recsys.services import ServiceContext

SERVICE_NAME = recommend_service_pb2.DESCRIPTOR.services_by_name["RecommendService"].full_name


class RecommendServicer(recommend_service_pb2_grpc.RecommendServiceServicer):
    def __init__(self, settings: RecommendSettings) -> None:
        self._settings = settings

    async def Recommend(  # noqa: N802 - the generated servicer's method name
        self,
        request: recommend_service_pb2.RecommendRequest,
        context: grpc.aio.ServicerContext,
    ) -> recommend_service_pb2.RecommendResponse:
        query = recommend_query_from_proto(request)
        validate_recommend_query(
            query,
            surfaces=self._settings.surfaces,
            categories=self._settings.categories,
            max_excluded_items=self._settings.max_excluded_items,
        )
        raise Unimplemented(
            "the recommendation pipeline is not deployed in this build",
            reason="PIPELINE_NOT_DEPLOYED",
        )

    async def DeleteUserData(  # noqa: N802 - the generated servicer's method name
        self,
        request: recommend_service_pb2.DeleteUserDataRequest,
        context: grpc.aio.ServicerContext,
    ) -> recommend_service_pb2.DeleteUserDataResponse:
        violations = Violations()
        violations.check_user_id("user_id", request.user_id)
        violations.raise_if_any()
        raise Unimplemented(
            "user data erasure is not deployed in this build", reason="PIPELINE_NOT_DEPLOYED"
        )


async def build(context: ServiceContext) -> list[ServiceBinding]:
    servicer = RecommendServicer(context.settings.recommend)
    return [
        ServiceBinding(
            SERVICE_NAME,
            lambda server: recommend_service_pb2_grpc.add_RecommendServiceServicer_to_server(
                servicer, server
            ),
        )
    ]
