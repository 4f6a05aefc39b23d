"""Authentication and authorisation on real servers with real TLS: the authorisation matrix of
every method of every hosted service (streaming ones included) against every kind of
credential, computed by an oracle from the settings; certificate identities; tokens over
plaintext; the caller in the access log and in the erasure audit record."""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from recsys import services
from recsys.errors import ConfigurationError
from recsys.grpc_server.app import GrpcApplication
from recsys.grpc_server.auth import certificate_identity
from recsys.grpc_server.reflection import REFLECTION_SERVICE
from recsys.settings import RecsysSettings
from recsys_client import AsyncRecsysClient, ClientOptions, RecsysClientError, TlsOptions
from tests.conftest import make_settings
from tests.support.certificates import CertificateAuthority, Pair

ROOT = Path(__file__).resolve().parents[2]
HEALTH = "grpc.health.v1.Health"

FRONTEND = "spiffe://recsys.test/frontend"
PRIVACY = "spiffe://recsys.test/privacy"
RECOMMEND = "spiffe://recsys.test/recommend"  # the Recommend service, calling internal services
INDEXER = "spiffe://recsys.test/indexer"
TOKENS = {FRONTEND: "tok-frontend-4b1d", PRIVACY: "tok-privacy-9c2e"}
CALLERS = (FRONTEND, PRIVACY, RECOMMEND, INDEXER)
AUTH: dict[str, Any] = {
    "enabled": True,
    "tokens": TOKENS,
    "allow": {
        "/recsys.v1.RecommendService/Recommend": [FRONTEND],
        "/recsys.v1.RecommendService/DeleteUserData": [PRIVACY],
        "recsys.v1.IngestService": [FRONTEND, RECOMMEND],
        "/recsys.v1.IndexShardService/Upsert": [INDEXER],
        "/recsys.v1.IndexShardService/Delete": [INDEXER],
        "/recsys.v1.IndexShardService/LoadSnapshot": [INDEXER],
        HEALTH: ["*"],
        REFLECTION_SERVICE: [INDEXER],
    },
    # Retrieve, Rank, IndexShardService Search and Info: not named, internal.
    "internal_callers": [RECOMMEND],
    "exempt_services": [f"/{HEALTH}/Check"],
}
INTERNAL = {
    "recsys.v1.IndexShardService",
    "recsys.v1.RetrieveService",
    "recsys.v1.RankService",
    "recsys.v1.IngestService",
}


# The oracle: the documented rule, written from the settings alone.
PASS = "PASS"  # past authentication and authorisation: judged on its merits


def expected_outcome(
    auth: dict[str, Any], mtls: bool, credential: Credential, method: str
) -> grpc.StatusCode | str:
    if mtls and not credential.trusted_certificate:
        return grpc.StatusCode.UNAVAILABLE  # the TLS handshake refuses the connection
    service = method.lstrip("/").partition("/")[0]
    if method in auth["exempt_services"] or service in auth["exempt_services"]:
        return PASS
    if credential.token is not None:
        caller = next((name for name, token in TOKENS.items() if token == credential.token), None)
    else:
        caller = credential.certificate_name if mtls else None
    if caller is None:
        return grpc.StatusCode.UNAUTHENTICATED
    allow = auth["allow"]
    named = allow.get(method, allow.get(service))
    if named is None:
        named = auth["internal_callers"] if service in INTERNAL else auth.get("default_allow", [])
    return PASS if "*" in named or caller in named else grpc.StatusCode.PERMISSION_DENIED


@dataclass(frozen=True)
class Credential:
    label: str
    pair: Pair | None = None  # the client certificate presented, if any
    trusted_certificate: bool = False  # issued by the server's client CA
    certificate_name: str | None = None  # its one SAN URI, when it has exactly one
    token: str | None = None


@dataclass(frozen=True)
class Pki:
    authority: CertificateAuthority
    server: Pair
    credentials: tuple[Credential, ...]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    authority = CertificateAuthority(tmp_path_factory.mktemp("ca"))
    stranger = CertificateAuthority(tmp_path_factory.mktemp("other-ca"))
    nameless = authority.issue_client("nameless", common_names=(FRONTEND,))  # a CN, no SAN URI
    credentials = [
        Credential("no credentials"),
        Credential("untrusted certificate", stranger.issue_client("untrusted", uris=(FRONTEND,))),
        Credential("certificate without a name", nameless, trusted_certificate=True),
        Credential(
            "certificate with two names",
            authority.issue_client("two-names", uris=(FRONTEND, PRIVACY)),
            trusted_certificate=True,
        ),
        # An unknown token is refused even beside a good certificate: no fallback.
        Credential(
            "unknown token",
            authority.issue_client("frontend-for-bad-token", uris=(FRONTEND,)),
            trusted_certificate=True,
            certificate_name=FRONTEND,
            token="tok-nobody",
        ),
    ]
    for caller, token in TOKENS.items():
        credentials.append(
            Credential(f"token of {caller}", nameless, trusted_certificate=True, token=token)
        )
    for index, caller in enumerate(CALLERS):
        pair = authority.issue_client(f"caller-{index}", uris=(caller,))
        credentials.append(
            Credential(
                f"certificate of {caller}", pair, trusted_certificate=True, certificate_name=caller
            )
        )
    return Pki(authority, authority.issue("recsys-server", server=True), tuple(credentials))


def auth_settings(tmp_path: Path, pki: Pki, *, mtls: bool, **extra: Any) -> RecsysSettings:
    tls = {
        "cert_file": str(pki.server.cert),
        "key_file": str(pki.server.key),
        "client_ca_file": str(pki.authority.pair.cert) if mtls else None,
        "require_client_auth": mtls,
    }
    server = {"tls": tls, **extra.pop("server", {})}
    return make_settings(
        tmp_path,
        auth=extra.pop("auth", AUTH),
        server=server,
        rank={"model_repository": str(ROOT / "triton_models"), "reload_poll_seconds": 0},
        logging=extra.pop("logging", {"access_log": False}),
        **extra,
    )


def channel_for(pki: Pki, address: str, credential: Credential) -> grpc.aio.Channel:
    pair = credential.pair
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki.authority.pair.cert.read_bytes(),
        private_key=pair.key.read_bytes() if pair else None,
        certificate_chain=pair.cert.read_bytes() if pair else None,
    )
    return grpc.aio.secure_channel(address, credentials)


@dataclass(frozen=True)
class Method:
    path: str
    client_streaming: bool
    server_streaming: bool


def hosted_methods(app: GrpcApplication) -> list[Method]:
    """Every method of every service the server registers: its services, health, reflection."""
    pool = descriptor_pool.Default()
    methods = []
    for name in [*app.service_names, HEALTH, REFLECTION_SERVICE]:
        for method in pool.FindServiceByName(name).methods:
            methods.append(
                Method(f"/{name}/{method.name}", method.client_streaming, method.server_streaming)
            )
    return methods


def _first_request(method: Method) -> bytes:
    if method.path.endswith("/Watch"):
        return health_pb2.HealthCheckRequest(service="readiness").SerializeToString()
    if "ServerReflection" in method.path:
        return reflection_pb2.ServerReflectionRequest(list_services="").SerializeToString()
    return b""  # an empty message is a valid encoding of every request type


async def outcome(channel: grpc.aio.Channel, method: Method, token: str | None) -> str:
    """The status code name of one call (OK when a streaming call answered its first message)."""
    metadata = (("authorization", f"Bearer {token}"),) if token is not None else ()
    identity: Callable[[bytes], bytes] = lambda data: data  # noqa: E731
    request = _first_request(method)
    try:
        if method.server_streaming:
            factory = channel.stream_stream if method.client_streaming else channel.unary_stream
            argument = iter([request]) if method.client_streaming else request
            call = factory(
                method.path, request_serializer=identity, response_deserializer=identity
            )(argument, metadata=metadata, timeout=5)
            message = await call.read()
            call.cancel()
            if message is grpc.aio.EOF:
                return (await call.code()).name
        elif method.client_streaming:
            await channel.stream_unary(
                method.path, request_serializer=identity, response_deserializer=identity
            )(iter([request]), metadata=metadata, timeout=5)
        else:
            await channel.unary_unary(
                method.path, request_serializer=identity, response_deserializer=identity
            )(request, metadata=metadata, timeout=5)
    except grpc.aio.AioRpcError as error:
        return str(error.code().name)
    return "OK"


def agrees(expected: grpc.StatusCode | str, actual: str) -> bool:
    if expected == PASS:
        return actual not in ("UNAUTHENTICATED", "PERMISSION_DENIED", "UNAVAILABLE")
    assert isinstance(expected, grpc.StatusCode)
    return actual == expected.name


@pytest.mark.parametrize("mtls", [True, False], ids=["mtls-required", "tls-tokens-only"])
async def test_authorisation_matrix(tmp_path: Path, pki: Pki, mtls: bool) -> None:
    settings = auth_settings(tmp_path, pki, mtls=mtls)
    apps = [
        await services.build_application(settings, ["embedded"]),
        await services.build_application(settings, ["shard"]),
    ]
    cells = mismatches = 0
    report = []
    try:
        for app in apps:
            await app.start()
        for app in apps:
            methods = hosted_methods(app)
            for credential in pki.credentials:
                async with channel_for(pki, app.address, credential) as channel:
                    for method in methods:
                        expected = expected_outcome(AUTH, mtls, credential, method.path)
                        actual = await outcome(channel, method, credential.token)
                        cells += 1
                        if not agrees(expected, actual):
                            mismatches += 1
                            report.append(
                                f"{credential.label} -> {method.path}: expected "
                                f"{getattr(expected, 'name', expected)}, got {actual}"
                            )
    finally:
        for app in apps:
            await app.shutdown()
    # Every hosted service and method kind is in the matrix.
    assert cells >= len(pki.credentials) * 16
    assert not report, f"{mismatches} of {cells} cells differ:\n" + "\n".join(report)


async def test_reflection_v1_is_authorised_by_its_own_name(tmp_path: Path, pki: Pki) -> None:
    """grpc.reflection.v1 is served too, and the allowlist decides it like any service: one
    that names only v1alpha does not open v1."""
    app = await services.build_application(auth_settings(tmp_path, pki, mtls=True), ["ingest"])
    await app.start()
    try:
        caller = next(c for c in pki.credentials if c.certificate_name == FRONTEND and not c.token)
        method = Method("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", True, True)
        async with channel_for(pki, app.address, caller) as channel:
            assert await outcome(channel, method, None) == "PERMISSION_DENIED"
    finally:
        await app.shutdown()


@pytest.mark.parametrize(
    ("names", "kind", "expected"),
    [
        ({"uris": (FRONTEND,), "common_names": ("x",)}, "san_uri", FRONTEND),
        ({"uris": (FRONTEND, PRIVACY)}, "san_uri", None),
        ({"common_names": (FRONTEND,)}, "san_uri", None),
        ({"dns_names": ("frontend.recsys.test",)}, "san_dns", "frontend.recsys.test"),
        ({"dns_names": ("a.test", "b.test"), "uris": (FRONTEND,)}, "san_dns", None),
        ({"uris": (FRONTEND,)}, "san_dns", None),
        ({"common_names": ("frontend",)}, "common_name", "frontend"),
        ({"common_names": ("frontend", "privacy")}, "common_name", None),
        ({"common_names": ("",)}, "common_name", None),
        ({"common_names": (" frontend",)}, "common_name", None),
        ({}, "common_name", None),
    ],
)
def test_certificate_identity_is_one_name_of_the_configured_kind(
    tmp_path: Path, names: dict[str, tuple[str, ...]], kind: str, expected: str | None
) -> None:
    pair = CertificateAuthority(tmp_path).issue_client("client", **names)
    assert certificate_identity(pair.cert.read_bytes(), kind) == expected


async def test_common_names_over_mutual_tls(tmp_path: Path, pki: Pki) -> None:
    """`certificate_identity = "common_name"`: one CN names the caller; two CNs or an empty
    one are UNAUTHENTICATED; the client library's TLS options carry the identity."""
    auth = {
        "enabled": True,
        "certificate_identity": "common_name",
        "allow": {"recsys.v1.IngestService": ["frontend"], HEALTH: ["*"]},
    }
    app = await services.build_application(
        auth_settings(tmp_path, pki, mtls=True, auth=auth), ["ingest"]
    )
    await app.start()
    method = Method("/recsys.v1.IngestService/RecordInteractions", False, False)
    try:
        for stem, common_names, expected in [
            ("cn-frontend", ("frontend",), "INVALID_ARGUMENT"),  # authorised; empty batch
            ("cn-intruder", ("intruder",), "PERMISSION_DENIED"),
            ("cn-two", ("frontend", "intruder"), "UNAUTHENTICATED"),
            ("cn-empty", ("",), "UNAUTHENTICATED"),
        ]:
            pair = pki.authority.issue_client(stem, common_names=common_names)
            credential = Credential(stem, pair, trusted_certificate=True)
            async with channel_for(pki, app.address, credential) as channel:
                assert await outcome(channel, method, None) == expected, stem
        pair = pki.authority.issue_client("cn-client", common_names=("frontend",))
        tls = TlsOptions(
            root_certificates=pki.authority.pair.cert.read_bytes(),
            certificate_chain=pair.cert.read_bytes(),
            private_key=pair.key.read_bytes(),
        )
        async with AsyncRecsysClient(ClientOptions(target=app.address, tls=tls)) as client:
            assert await client.check_health() == "SERVING"
            with pytest.raises(RecsysClientError) as refused:
                await client.record_interactions([])
            assert refused.value.code is grpc.StatusCode.INVALID_ARGUMENT
    finally:
        await app.shutdown()


def plaintext_settings(tmp_path: Path, host: str, **auth: Any) -> RecsysSettings:
    return make_settings(
        tmp_path,
        auth={"enabled": True, "tokens": TOKENS, **auth},
        server={"host": host},
        logging={"access_log": False},
    )


async def test_tokens_over_plaintext_are_refused_unless_allowed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = GrpcApplication(plaintext_settings(tmp_path, "0.0.0.0"), [])
    with pytest.raises(ConfigurationError, match="allow_plaintext_tokens") as refused:
        await app.start()
    assert not any(token in refused.value.message for token in TOKENS.values())
    await app.shutdown()
    for host, extra in [("0.0.0.0", {"allow_plaintext_tokens": True}), ("127.0.0.1", {})]:
        caplog.clear()
        app = GrpcApplication(plaintext_settings(tmp_path, host, **extra), [])
        with caplog.at_level(logging.WARNING, logger="recsys.grpc_server.auth"):
            await app.start()
        await app.shutdown()
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert any("plaintext" in record.getMessage() for record in warnings), host


async def test_the_caller_is_in_the_access_log_and_the_erasure_audit(
    tmp_path: Path, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    settings = auth_settings(tmp_path, pki, mtls=True, logging={"access_log": True})
    app = await services.build_application(settings, ["embedded"])
    await app.start()
    by_token = next(c for c in pki.credentials if c.token == TOKENS[PRIVACY])
    by_certificate = next(
        c for c in pki.credentials if c.certificate_name == FRONTEND and c.token is None
    )
    try:
        with caplog.at_level(logging.INFO, logger="recsys.access"):
            async with channel_for(pki, app.address, by_token) as channel:
                erase = channel.unary_unary(
                    "/recsys.v1.RecommendService/DeleteUserData",
                    request_serializer=lambda data: data,
                )
                await erase(
                    b"\n\x05alice",  # DeleteUserDataRequest(user_id="alice")
                    metadata=(
                        ("authorization", f"Bearer {TOKENS[PRIVACY]}"),
                        ("x-request-id", "erase-1"),
                    ),
                    timeout=10,
                )
            async with channel_for(pki, app.address, by_certificate) as channel:
                watch = health_pb2_grpc.HealthStub(channel).Watch(
                    health_pb2.HealthCheckRequest(service="readiness"), timeout=5
                )
                await watch.read()
                watch.cancel()
                refused = Method("/recsys.v1.RecommendService/DeleteUserData", False, False)
                assert await outcome(channel, refused, None) == "PERMISSION_DENIED"
    finally:
        await app.shutdown()
    lines = [
        (record.grpc_method, record.grpc_code, record.caller)
        for record in caplog.records
        if record.name == "recsys.access"
    ]
    assert ("/recsys.v1.RecommendService/DeleteUserData", "OK", PRIVACY) in lines
    assert (f"/{HEALTH}/Watch", "CANCELLED", FRONTEND) in lines
    assert ("/recsys.v1.RecommendService/DeleteUserData", "PERMISSION_DENIED", FRONTEND) in lines
    database = settings.database.url.removeprefix("sqlite+aiosqlite:///")
    with sqlite3.connect(database) as connection:
        rows = connection.execute(
            "SELECT details FROM audit_log WHERE action = 'erase_user'"
        ).fetchall()
    (details,) = [json.loads(row[0]) for row in rows]
    assert (details["caller"], details["request_id"]) == (PRIVACY, "erase-1")
