"""Authentication and authorisation on every method of every hosted service (the auth matrix),
and mutual TLS identities."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import empty_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from recsys import services
from recsys.grpc_server.app import GrpcApplication
from recsys.settings import RecsysSettings
from recsys_client import AsyncRecsysClient, ClientOptions, RecsysClientError, TlsOptions
from tests.conftest import make_settings
from tests.support.certificates import CertificateAuthority

ROOT = Path(__file__).resolve().parents[2]
TOKENS = {"frontend": "tok-frontend", "privacy": "tok-privacy", "indexer": "tok-indexer"}
ALLOW = {
    "/recsys.v1.RecommendService/DeleteUserData": ["privacy"],
    "recsys.v1.IndexShardService": ["indexer"],
}
# Who may call what; every other caller is refused with PERMISSION_DENIED.
METHODS = {
    "/recsys.v1.RecommendService/Recommend": "frontend",
    "/recsys.v1.RecommendService/DeleteUserData": "privacy",
    "/recsys.v1.IngestService/RecordInteractions": "frontend",
    "/recsys.v1.RetrieveService/Retrieve": "frontend",
    "/recsys.v1.RankService/Rank": "frontend",
    "/recsys.v1.IndexShardService/Search": "indexer",
    "/recsys.v1.IndexShardService/Upsert": "indexer",
    "/recsys.v1.IndexShardService/Delete": "indexer",
    "/recsys.v1.IndexShardService/Info": "indexer",
    "/recsys.v1.IndexShardService/LoadSnapshot": "indexer",
}


def auth_settings(tmp_path: Path, **extra: object) -> RecsysSettings:
    return make_settings(
        tmp_path,
        auth={"enabled": True, "tokens": TOKENS, "allow": ALLOW,
              "default_allow": ["frontend"]},
        rank={"model_repository": str(ROOT / "triton_models"), "reload_poll_seconds": 0},
        database={"url": f"sqlite+aiosqlite:///{tmp_path / 'meta.db'}"},
        logging={"access_log": False},
        **extra,
    )  # fmt: skip


@pytest.fixture
async def apps(tmp_path: Path) -> AsyncIterator[dict[str, GrpcApplication]]:
    settings = auth_settings(tmp_path)
    embedded = await services.build_application(settings, ["embedded"])
    shard = await services.build_application(settings, ["shard"])
    await embedded.start()
    await shard.start()
    yield {"embedded": embedded, "shard": shard}
    await embedded.shutdown()
    await shard.shutdown()


async def call(address: str, method: str, token: str | None) -> grpc.StatusCode:
    metadata = (("authorization", f"Bearer {token}"),) if token is not None else ()
    async with grpc.aio.insecure_channel(address) as channel:
        # An empty message is a valid encoding of every request type.
        stub = channel.unary_unary(
            method,
            request_serializer=empty_pb2.Empty.SerializeToString,
            response_deserializer=lambda data: data,
        )
        try:
            await stub(empty_pb2.Empty(), metadata=metadata, timeout=10)
        except grpc.aio.AioRpcError as error:
            return error.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize("method", list(METHODS))
async def test_auth_matrix(apps: dict[str, GrpcApplication], method: str) -> None:
    app = apps["shard" if "IndexShard" in method else "embedded"]
    allowed = METHODS[method]
    assert await call(app.address, method, None) is grpc.StatusCode.UNAUTHENTICATED
    assert await call(app.address, method, "not-a-token") is grpc.StatusCode.UNAUTHENTICATED
    for caller, token in TOKENS.items():
        code = await call(app.address, method, token)
        if caller == allowed:
            # Past authorisation: the empty request is judged on its merits.
            assert code not in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
        else:
            assert code is grpc.StatusCode.PERMISSION_DENIED, (caller, code)


async def test_health_needs_no_credentials(apps: dict[str, GrpcApplication]) -> None:
    async with grpc.aio.insecure_channel(apps["embedded"].address) as channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="readiness")
        )
    assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_mutual_tls_names_the_caller(tmp_path: Path) -> None:
    authority = CertificateAuthority(tmp_path)
    server = authority.issue("recsys-server", server=True)
    settings = auth_settings(
        tmp_path,
        server={"tls": {"cert_file": str(server.cert), "key_file": str(server.key),
                        "client_ca_file": str(authority.pair.cert), "require_client_auth": True}},
    )  # fmt: skip
    app = await services.build_application(settings, ["ingest"])
    await app.start()
    method = "/recsys.v1.IngestService/RecordInteractions"
    try:
        for common_name, expected in [
            ("frontend", grpc.StatusCode.INVALID_ARGUMENT),  # authorised; empty batch refused
            ("intruder", grpc.StatusCode.PERMISSION_DENIED),
        ]:
            client = authority.issue(common_name)
            credentials = grpc.ssl_channel_credentials(
                root_certificates=authority.pair.cert.read_bytes(),
                private_key=client.key.read_bytes(),
                certificate_chain=client.cert.read_bytes(),
            )
            async with grpc.aio.secure_channel(app.address, credentials) as channel:
                stub = channel.unary_unary(
                    method,
                    request_serializer=empty_pb2.Empty.SerializeToString,
                    response_deserializer=lambda data: data,
                )
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub(empty_pb2.Empty(), timeout=10)
                assert caught.value.code() is expected, common_name
        # The client library's TLS options carry the same identity.
        client_pair = authority.issue("frontend")
        tls = TlsOptions(
            root_certificates=authority.pair.cert.read_bytes(),
            certificate_chain=client_pair.cert.read_bytes(),
            private_key=client_pair.key.read_bytes(),
        )
        async with AsyncRecsysClient(ClientOptions(target=app.address, tls=tls)) as client:
            assert await client.check_health() == "SERVING"
            with pytest.raises(RecsysClientError) as refused:
                await client.record_interactions([])
            assert refused.value.code is grpc.StatusCode.INVALID_ARGUMENT
        # Without a client certificate the handshake itself fails.
        anonymous = grpc.ssl_channel_credentials(root_certificates=authority.pair.cert.read_bytes())
        async with grpc.aio.secure_channel(app.address, anonymous) as channel:
            stub = channel.unary_unary(method, request_serializer=empty_pb2.Empty.SerializeToString)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub(empty_pb2.Empty(), timeout=5)
            assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    finally:
        await app.shutdown()
