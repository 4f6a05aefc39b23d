"""recsys_client against real servers: retries, deadlines, errors, metadata (sync and asyncio)."""

from __future__ import annotations

import warnings
from pathlib import Path

import grpc
import pytest

from recsys.errors import (
    FieldViolation,
    InvalidArgument,
    RecsysError,
    ResourceExhausted,
    Unavailable,
)
from recsys.grpc_server.app import GrpcApplication, ServiceBinding
from recsys.observability.logging import current_request_id
from recsys.servicers.recommend import SERVICE_NAME
from recsys.v1 import recommend_service_pb2, recommend_service_pb2_grpc
from recsys_client import (
    AsyncRecsysClient,
    ClientOptions,
    InsecureTokenWarning,
    RecsysClient,
    RecsysClientError,
    RetryOptions,
    TlsOptions,
)
from recsys_client.options import is_loopback_target
from tests.conftest import StartApp, app_in_thread, make_settings

FAST_RETRY = RetryOptions(max_attempts=3, initial_backoff_seconds=0.01, max_backoff_seconds=0.05)


class ScriptedRecommend(recommend_service_pb2_grpc.RecommendServiceServicer):
    """Raises the scripted errors in order, then answers; counts attempts and metadata."""

    def __init__(self, errors: list[RecsysError]) -> None:
        self.errors = list(errors)
        self.attempts = 0
        self.authorization: list[str] = []

    async def Recommend(  # noqa: N802
        self, request: recommend_service_pb2.RecommendRequest, context: grpc.aio.ServicerContext
    ) -> recommend_service_pb2.RecommendResponse:
        self.attempts += 1
        self.authorization.extend(
            value for key, value in context.invocation_metadata() if key == "authorization"
        )
        if self.errors:
            raise self.errors.pop(0)
        return recommend_service_pb2.RecommendResponse(
            request_id=current_request_id() or "", explanation=f"attempt {self.attempts}"
        )


def binding_for(servicer: ScriptedRecommend) -> ServiceBinding:
    return ServiceBinding(
        SERVICE_NAME,
        lambda server: recommend_service_pb2_grpc.add_RecommendServiceServicer_to_server(
            servicer, server
        ),
    )


def unavailable() -> Unavailable:
    return Unavailable("try again")


@pytest.mark.parametrize(
    ("errors", "expected_attempts", "expected_code"),
    [
        ([unavailable(), unavailable()], 3, None),
        ([unavailable(), unavailable(), unavailable()], 3, "UNAVAILABLE"),
        ([InvalidArgument([FieldViolation("limit", "bad")])], 1, "INVALID_ARGUMENT"),
        ([ResourceExhausted("slow down", retry_after_seconds=1)], 1, "RESOURCE_EXHAUSTED"),
        ([RecsysError("boom")], 1, "UNKNOWN"),
    ],
)
async def test_async_client_retries_only_on_unavailable(
    start_app: StartApp,
    errors: list[RecsysError],
    expected_attempts: int,
    expected_code: str | None,
) -> None:
    servicer = ScriptedRecommend(errors)
    app = await start_app([binding_for(servicer)])
    options = ClientOptions(target=app.address, timeout_seconds=5, retry=FAST_RETRY)
    async with AsyncRecsysClient(options) as client:
        if expected_code is None:
            response = await client.recommend("u1", limit=5)
            assert response.explanation == f"attempt {expected_attempts}"
        else:
            with pytest.raises(RecsysClientError) as caught:
                await client.recommend("u1", limit=5)
            assert caught.value.code.name == expected_code
    assert servicer.attempts == expected_attempts


async def test_retries_can_be_turned_off(start_app: StartApp) -> None:
    servicer = ScriptedRecommend([unavailable()])
    app = await start_app([binding_for(servicer)])
    async with AsyncRecsysClient(ClientOptions(target=app.address, retry=None)) as client:
        with pytest.raises(RecsysClientError):
            await client.recommend("u1")
    assert servicer.attempts == 1


def test_sync_client_retries_only_on_unavailable(tmp_path: Path) -> None:
    servicers = [ScriptedRecommend([unavailable()]), ScriptedRecommend([RecsysError("boom")])]

    async def build() -> GrpcApplication:
        return GrpcApplication(make_settings(tmp_path), [binding_for(servicers[0])])

    with app_in_thread(build) as app:
        options = ClientOptions(target=app.address, timeout_seconds=5, retry=FAST_RETRY)
        with RecsysClient(options) as client:
            assert client.recommend("u1").explanation == "attempt 2"
    assert servicers[0].attempts == 2


def test_sync_client_error_keeps_code_details_and_request_id(tmp_path: Path) -> None:
    servicer = ScriptedRecommend(
        [InvalidArgument([FieldViolation("limit", "must be between 1 and 100, got 0")])]
    )

    async def build() -> GrpcApplication:
        return GrpcApplication(make_settings(tmp_path), [binding_for(servicer)])

    with app_in_thread(build) as app, RecsysClient(ClientOptions(target=app.address)) as client:
        with pytest.raises(RecsysClientError) as caught:
            client.recommend("u1", request_id="mine-1")
        error = caught.value
        assert error.code is grpc.StatusCode.INVALID_ARGUMENT
        assert error.request_id == "mine-1"
        assert error.reason == "LIMIT_INVALID"  # the first violation's cause
        assert error.domain == "recsys.v1"
        assert [(v.field, v.description) for v in error.field_violations] == [
            ("limit", "must be between 1 and 100, got 0")
        ]
        assert "limit" in str(error)
        # A successful call echoes the caller's request id into the response.
        assert client.recommend("u1", request_id="mine-2").request_id == "mine-2"


async def test_every_call_has_a_deadline(start_app: StartApp) -> None:
    class Slow(ScriptedRecommend):
        async def Recommend(self, request, context):  # type: ignore[no-untyped-def]  # noqa: N802
            import asyncio

            await asyncio.sleep(2)
            return recommend_service_pb2.RecommendResponse()

    app = await start_app([binding_for(Slow([]))])
    async with AsyncRecsysClient(ClientOptions(target=app.address, timeout_seconds=0.2)) as client:
        with pytest.raises(RecsysClientError) as caught:
            await client.recommend("u1")
        assert caught.value.code is grpc.StatusCode.DEADLINE_EXCEEDED
        with pytest.raises(RecsysClientError) as caught:
            await client.recommend("u1", timeout=0.05)
        assert caught.value.code is grpc.StatusCode.DEADLINE_EXCEEDED


async def test_bearer_token_is_sent(start_app: StartApp) -> None:
    servicer = ScriptedRecommend([])
    app = await start_app([binding_for(servicer)])
    options = ClientOptions(target=app.address, bearer_token="s3cret")
    with pytest.warns(InsecureTokenWarning, match="in clear"):  # loopback: allowed, warned
        client = AsyncRecsysClient(options)
    async with client:
        await client.recommend("u1")
    assert servicer.authorization == ["Bearer s3cret"]


@pytest.mark.parametrize("client_class", [RecsysClient, AsyncRecsysClient])
async def test_a_bearer_token_is_not_sent_in_clear_to_another_machine(
    client_class: type[RecsysClient] | type[AsyncRecsysClient],
) -> None:
    options = ClientOptions(target="recsys.example.com:50051", bearer_token="s3cret")
    with pytest.raises(ValueError, match="without TLS") as refused:
        client_class(options)
    assert "s3cret" not in str(refused.value)
    allowed = ClientOptions(
        target="10.1.2.3:50051", bearer_token="s3cret", allow_insecure_token=True
    )
    with pytest.warns(InsecureTokenWarning):
        client = client_class(allowed)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # over TLS: no warning
        secure = client_class(
            ClientOptions(
                target="recsys.example.com:50051", bearer_token="s3cret", tls=TlsOptions()
            )
        )
    for opened in (client, secure):
        closing = opened.close()
        if closing is not None:
            await closing


@pytest.mark.parametrize(
    ("target", "loopback"),
    [
        ("127.0.0.1:50051", True),
        ("127.8.9.1:50051", True),
        ("localhost:50051", True),
        ("[::1]:50051", True),
        ("dns:///localhost:50051", True),
        ("ipv4:127.0.0.1:1,127.0.0.2:2", True),
        ("unix:///run/recsys.sock", True),
        ("10.0.0.1:50051", False),
        ("ipv4:127.0.0.1:1,10.0.0.1:2", False),
        ("localhost.example.com:50051", False),
        ("dns://8.8.8.8/recsys.example.com:443", False),
        ("[2001:db8::1]:50051", False),
        ("", False),
    ],
)
def test_loopback_targets(target: str, loopback: bool) -> None:
    assert is_loopback_target(target) is loopback


async def test_health_check_through_the_client(start_app: StartApp) -> None:
    app = await start_app([binding_for(ScriptedRecommend([]))])
    async with AsyncRecsysClient(ClientOptions(target=app.address)) as client:
        assert await client.check_health("readiness") == "SERVING"
        assert await client.check_health(SERVICE_NAME) == "SERVING"
        with pytest.raises(RecsysClientError) as caught:
            await client.check_health("nope")
        assert caught.value.code is grpc.StatusCode.NOT_FOUND


def test_service_config_retries_idempotent_methods_on_unavailable_only() -> None:
    import json

    config = json.loads(ClientOptions().service_config())
    (method_config,) = config["methodConfig"]
    assert method_config["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE", "CANCELLED"]
    names = {(entry["service"], entry["method"]) for entry in method_config["name"]}
    assert ("recsys.v1.RecommendService", "Recommend") in names
    assert ("recsys.v1.IndexShardService", "Upsert") not in names
