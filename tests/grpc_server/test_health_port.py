"""The plaintext health port (`server.health_port`): kubelet's native gRPC probes speak
plaintext only, so with mutual TLS on the service port they use this port. It answers the same
health statuses and serves nothing else; the service port still refuses a caller without a
client certificate."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from recsys import services
from recsys.v1 import rank_service_pb2, rank_service_pb2_grpc
from tests.conftest import make_settings
from tests.support.certificates import CertificateAuthority

ROOT = Path(__file__).resolve().parents[2]
RANK = "recsys.v1.RankService"


async def check(channel: grpc.aio.Channel, name: str) -> str:
    response = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=name), timeout=5
    )
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


async def test_probes_pass_on_the_health_port_while_the_service_port_wants_a_certificate(
    tmp_path: Path,
) -> None:
    (tmp_path / "ca").mkdir()
    authority = CertificateAuthority(tmp_path / "ca")
    server = authority.issue("recsys-server", server=True)
    settings = make_settings(
        tmp_path,
        server={
            "health_port": 0,
            "tls": {"cert_file": str(server.cert), "key_file": str(server.key),
                    "client_ca_file": str(authority.pair.cert), "require_client_auth": True},
        },
        rank={"model_repository": str(ROOT / "triton_models"), "reload_poll_seconds": 0},
    )  # fmt: skip
    app = await services.build_application(settings, ["rank"])
    await app.start()
    try:
        assert app.health_port is not None
        assert app.health_port != app.port
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.health_port}") as channel:
            for name in ("liveness", "readiness", "", RANK):
                assert await check(channel, name) == "SERVING"
            # Nothing but health there.
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await rank_service_pb2_grpc.RankServiceStub(channel).Rank(
                    rank_service_pb2.RankRequest(user_id="u1"), timeout=5
                )
            assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
        # The service port: TLS without a client certificate is refused at the handshake.
        anonymous = grpc.ssl_channel_credentials(root_certificates=authority.pair.cert.read_bytes())
        async with grpc.aio.secure_channel(app.address, anonymous) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await check(channel, "readiness")
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        health_port = app.health_port
    finally:
        await app.shutdown()
    # Stopped with the server.
    async with grpc.aio.insecure_channel(f"127.0.0.1:{health_port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError):
            await check(channel, "liveness")


def test_no_health_port_unless_asked(tmp_path: Path) -> None:
    assert make_settings(tmp_path).server.health_port is None
