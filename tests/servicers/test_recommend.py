"""RecommendService request validation over gRPC (the pipeline lands with a later issue)."""

from __future__ import annotations

import pytest

from recsys import services
from recsys.grpc_server.app import GrpcApplication
from recsys.v1 import common_pb2
from recsys_client import AsyncRecsysClient, ClientOptions, RecsysClientError
from tests.conftest import make_settings


@pytest.fixture
async def client() -> AsyncRecsysClient:
    settings = make_settings(recommend={"categories": ["Action", "Comedy"]})
    app: GrpcApplication = await services.build_application(settings, ["recommend"])
    await app.start()
    async with AsyncRecsysClient(ClientOptions(target=app.address, timeout_seconds=5)) as client:
        yield client
    await app.shutdown()


@pytest.mark.parametrize(
    ("arguments", "fields"),
    [
        ({"user_id": "", "surface": "homepage", "limit": 10}, ["user_id"]),
        ({"user_id": "u 1", "surface": "homepage", "limit": 10}, ["user_id"]),
        ({"user_id": "u1", "surface": "nowhere", "limit": 10}, ["surface"]),
        ({"user_id": "u1", "surface": "homepage", "limit": 0}, ["limit"]),
        ({"user_id": "u1", "surface": "homepage", "limit": 101}, ["limit"]),
        (
            {
                "user_id": "u1",
                "surface": "homepage",
                "limit": 5,
                "context": common_pb2.RequestContext(
                    country="usa", locale="english!", category="Horror"
                ),
            },
            ["context.country", "context.locale", "context.category"],
        ),
        (
            {"user_id": "u1", "surface": "homepage", "limit": 5, "excluded_item_ids": [3, -1]},
            ["excluded_item_ids[1]"],
        ),
        ({"user_id": "", "surface": "", "limit": -3}, ["user_id", "surface", "limit"]),
    ],
)
async def test_invalid_requests_name_the_fields(
    client: AsyncRecsysClient, arguments: dict[str, object], fields: list[str]
) -> None:
    user_id = arguments.pop("user_id")
    with pytest.raises(RecsysClientError) as caught:
        await client.recommend(user_id, **arguments)  # type: ignore[arg-type]
    assert caught.value.code.name == "INVALID_ARGUMENT"
    assert [violation.field for violation in caught.value.field_violations] == fields


async def test_a_valid_request_is_unimplemented_until_the_pipeline_lands(
    client: AsyncRecsysClient,
) -> None:
    with pytest.raises(RecsysClientError) as caught:
        await client.recommend(
            "user_1",
            surface="homepage",
            limit=10,
            context=common_pb2.RequestContext(country="US", locale="en-US", category="Action"),
        )
    assert caught.value.code.name == "UNIMPLEMENTED"
    assert caught.value.reason == "PIPELINE_NOT_DEPLOYED"


async def test_delete_user_data_validates_the_user_id(client: AsyncRecsysClient) -> None:
    with pytest.raises(RecsysClientError) as caught:
        await client.delete_user_data("")
    assert [v.field for v in caught.value.field_violations] == ["user_id"]
