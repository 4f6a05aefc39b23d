"""Outbound channels (`recsys.adapters.channels`) with TLS, mutual TLS and bearer tokens: every
outbound adapter answers a real RPC through a loopback server that requires a client
certificate, fails cleanly (Unavailable, no token in the message) against the wrong CA or
without a certificate, and the startup probe names a channel that can never work."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2 as kserve_pb2
from tritonclient.grpc import service_pb2_grpc as kserve_grpc

from recsys.adapters.channels import BearerToken, channel_security, outbound_channel
from recsys.adapters.dependency_probe import probe_dependency
from recsys.adapters.rankers.triton import TritonRanker
from recsys.adapters.remote import GrpcCandidateSource, GrpcScorer
from recsys.adapters.shards.grpc import GrpcShardClient
from recsys.deploy.certificates import LayoutCertificates, ensure_layout_certificates
from recsys.domain.ranking import RANKING_FEATURES, Backend
from recsys.domain.requests import RequestContext
from recsys.domain.retrieval import RetrievalQuery
from recsys.errors import ConfigurationError, Unavailable
from recsys.grpc_server.app import GrpcApplication, ServiceBinding
from recsys.settings import OutboundSettings, RecsysSettings, load_settings
from recsys.v1 import (
    index_shard_service_pb2,
    index_shard_service_pb2_grpc,
    rank_service_pb2,
    rank_service_pb2_grpc,
    retrieve_service_pb2,
    retrieve_service_pb2_grpc,
)
from tests.conftest import StartApp, make_settings

TOKEN = "s3cret-token-for-all"
RETRIEVE_TOKEN = "s3cret-retrieve-token"
QUERY = RetrievalQuery(
    vector=np.ones(4, np.float32), embedding_version="emb-1", k=10, excluded_item_ids=frozenset()
)


class RecordingDependency(
    retrieve_service_pb2_grpc.RetrieveServiceServicer,
    rank_service_pb2_grpc.RankServiceServicer,
    index_shard_service_pb2_grpc.IndexShardServiceServicer,
):
    """Retrieve, Rank and a shard's Search; each remembers the caller's `authorization` header
    and certificate name."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None, str | None]] = []

    def _record(self, method: str, context: grpc.aio.ServicerContext) -> None:
        headers = dict(context.invocation_metadata() or ())
        names = context.auth_context().get("x509_common_name") or [b""]
        self.calls.append((method, headers.get("authorization"), names[0].decode() or None))

    async def Retrieve(  # noqa: N802
        self, request: retrieve_service_pb2.RetrieveRequest, context: grpc.aio.ServicerContext
    ) -> retrieve_service_pb2.RetrieveResponse:
        self._record("Retrieve", context)
        response = retrieve_service_pb2.RetrieveResponse(embedding_version="emb-1")
        response.candidates.add(item_id=7, score=0.5, shard_id=0)
        return response

    async def Rank(  # noqa: N802
        self, request: rank_service_pb2.RankRequest, context: grpc.aio.ServicerContext
    ) -> rank_service_pb2.RankResponse:
        self._record("Rank", context)
        response = rank_service_pb2.RankResponse(model_version="ranker:1")
        # GrpcScorer sends and asks for packed columns.
        response.item_ids.extend(request.candidate_item_ids)
        response.scores.extend(score * 2 for score in request.candidate_scores)
        return response

    async def Search(  # noqa: N802
        self, request: index_shard_service_pb2.SearchRequest, context: grpc.aio.ServicerContext
    ) -> index_shard_service_pb2.SearchResponse:
        self._record("Search", context)
        response = index_shard_service_pb2.SearchResponse(shard_id=3, index_version="v1")
        response.results.add(item_ids=[5, 6], scores=[0.9, 0.8])
        return response


def _bindings(servicer: RecordingDependency) -> list[ServiceBinding]:
    def binding(module: Any, name: str, add: Callable[..., None]) -> ServiceBinding:
        full_name = module.DESCRIPTOR.services_by_name[name].full_name
        return ServiceBinding(full_name, lambda server: add(servicer, server))

    return [
        binding(
            retrieve_service_pb2,
            "RetrieveService",
            retrieve_service_pb2_grpc.add_RetrieveServiceServicer_to_server,
        ),
        binding(
            rank_service_pb2, "RankService", rank_service_pb2_grpc.add_RankServiceServicer_to_server
        ),
        binding(
            index_shard_service_pb2,
            "IndexShardService",
            index_shard_service_pb2_grpc.add_IndexShardServiceServicer_to_server,
        ),
    ]


@pytest.fixture
def certificates(tmp_path: Path) -> LayoutCertificates:
    return ensure_layout_certificates(tmp_path / "tls")


def mtls_settings(tmp_path: Path, certificates: LayoutCertificates) -> RecsysSettings:
    return make_settings(
        tmp_path,
        server={"tls": {"cert_file": str(certificates.server.cert),
                        "key_file": str(certificates.server.key),
                        "client_ca_file": str(certificates.ca), "require_client_auth": True}},
    )  # fmt: skip


def outbound(
    certificates: LayoutCertificates | None,
    *,
    caller: str | None = "recommend",
    ca: Path | None = None,
    **extra: Any,
) -> OutboundSettings:
    tls: dict[str, Any] = {}
    if certificates is not None:
        tls = {"enabled": True, "ca_file": str(ca or certificates.ca)}
        if caller is not None:
            identity = certificates.client(caller)
            tls |= {"cert_file": str(identity.cert), "key_file": str(identity.key)}
    return OutboundSettings.model_validate({"tls": tls, **extra})


@pytest.fixture
async def mtls_dependency(
    tmp_path: Path, certificates: LayoutCertificates, start_app: StartApp
) -> tuple[RecordingDependency, GrpcApplication]:
    servicer = RecordingDependency()
    app = await start_app(_bindings(servicer), app_settings=mtls_settings(tmp_path, certificates))
    return servicer, app


async def test_every_outbound_adapter_answers_over_mutual_tls_with_its_token(
    mtls_dependency: tuple[RecordingDependency, GrpcApplication],
    certificates: LayoutCertificates,
) -> None:
    servicer, app = mtls_dependency
    settings = outbound(certificates, token=TOKEN, tokens={"retrieve": RETRIEVE_TOKEN})
    source = GrpcCandidateSource(app.address, timeout_seconds=5, outbound=settings)
    scorer = GrpcScorer(app.address, timeout_seconds=5, outbound=settings)
    shard = GrpcShardClient(app.address, outbound=settings)
    try:
        assert (await source.retrieve(QUERY)).item_ids.tolist() == [7]
        scored = await scorer.score(
            "u1", np.array([1, 2], np.int64), np.array([0.1, 0.3], np.float32), RequestContext()
        )
        assert scored.backend is Backend.MODEL
        assert scored.scores.tolist() == pytest.approx([0.2, 0.6])
        found = await shard.search(
            np.ones((1, 4), np.float32), 2, embedding_version="emb-1", nprobe=None,
            ef_search=None, timeout=5,
        )  # fmt: skip
        assert found.hits[0].item_ids.tolist() == [5, 6]
    finally:
        for adapter in (source, scorer, shard):
            await adapter.close()
    assert servicer.calls == [
        ("Retrieve", f"Bearer {RETRIEVE_TOKEN}", "recommend"),  # its own token
        ("Rank", f"Bearer {TOKEN}", "recommend"),  # the token for every other target
        ("Search", f"Bearer {TOKEN}", "recommend"),
    ]


async def test_plaintext_channels_carry_the_token_too(start_app: StartApp) -> None:
    servicer = RecordingDependency()
    app = await start_app(_bindings(servicer))
    with_token = GrpcCandidateSource(app.address, timeout_seconds=5, outbound=outbound(
        None, tokens={"retrieve": RETRIEVE_TOKEN}
    ))  # fmt: skip
    without = GrpcCandidateSource(app.address, timeout_seconds=5)
    try:
        await with_token.retrieve(QUERY)
        await without.retrieve(QUERY)
    finally:
        await with_token.close()
        await without.close()
    assert servicer.calls == [
        ("Retrieve", f"Bearer {RETRIEVE_TOKEN}", None),
        ("Retrieve", None, None),
    ]


async def test_a_wrong_ca_or_no_client_certificate_fails_cleanly(
    mtls_dependency: tuple[RecordingDependency, GrpcApplication],
    certificates: LayoutCertificates,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    servicer, app = mtls_dependency
    other = ensure_layout_certificates(tmp_path / "other-tls")
    for settings in [
        outbound(certificates, ca=other.ca, token=TOKEN),  # the server's chain is not trusted
        outbound(certificates, caller=None, token=TOKEN),  # no client certificate
        outbound(None, token=TOKEN),  # plaintext to a TLS port: the reported bug
    ]:
        source = GrpcCandidateSource(app.address, timeout_seconds=5, outbound=settings)
        scorer = GrpcScorer(app.address, timeout_seconds=5, outbound=settings)
        shard = GrpcShardClient(app.address, outbound=settings)
        try:
            with pytest.raises(Unavailable) as caught:
                await source.retrieve(QUERY)
            assert TOKEN not in str(caught.value)
            # Rank out of reach: the scorer orders by the retrieval score.
            fallback = await scorer.score(
                "u1", np.array([1, 2], np.int64), np.array([0.1, 0.3], np.float32),
                RequestContext(),
            )  # fmt: skip
            assert fallback.backend is Backend.RULE_FALLBACK
            with pytest.raises(Unavailable):
                await shard.describe(timeout=5)
        finally:
            for adapter in (source, scorer, shard):
                await adapter.close()
    assert servicer.calls == []
    assert TOKEN not in caplog.text


async def test_the_probe_names_a_channel_that_cannot_work(
    mtls_dependency: tuple[RecordingDependency, GrpcApplication],
    certificates: LayoutCertificates,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, app = mtls_dependency
    other = ensure_layout_certificates(tmp_path / "other-tls")
    cases = [
        (outbound(certificates, token=TOKEN), None),
        (outbound(certificates, ca=other.ca, token=TOKEN), "TLS handshake failed"),
        (outbound(None, token=TOKEN), "closes the connection"),
        (outbound(certificates, caller=None), "closes the connection"),
    ]
    for settings, cause in cases:
        caplog.clear()
        channel = outbound_channel(app.address, "retrieve", settings)
        try:
            with caplog.at_level(logging.INFO, logger="recsys.adapters.dependency_probe"):
                reachable = await probe_dependency(
                    "retrieve service", app.address, channel, window_seconds=20,
                    interval_seconds=0.05,
                )  # fmt: skip
        finally:
            await channel.close()
        errors = [record for record in caplog.records if record.levelno == logging.ERROR]
        if cause is None:
            assert reachable
            assert not errors
        else:
            assert not reachable
            assert len(errors) == 1
            assert cause in errors[0].cause
        assert TOKEN not in caplog.text


async def test_the_probe_gives_up_on_a_dependency_that_never_listens(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from recsys.deploy.ports import free_port_range

    port, _ = free_port_range((0,))
    channel = outbound_channel(f"127.0.0.1:{port}", "rank", OutboundSettings())
    try:
        assert not await probe_dependency(
            "rank service", f"127.0.0.1:{port}", channel, window_seconds=0.5,
            interval_seconds=0.1,
        )  # fmt: skip
    finally:
        await channel.close()
    (error,) = [record for record in caplog.records if record.levelno == logging.ERROR]
    assert error.cause.startswith("unreachable for")  # type: ignore[attr-defined]


class FakeModelServer(kserve_grpc.GRPCInferenceServiceServicer):
    """A KServe V2 model server scoring every row as the sum of its features."""

    def __init__(self) -> None:
        self.headers: list[str | None] = []

    async def ModelMetadata(  # noqa: N802
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> Any:
        self.headers.append(dict(context.invocation_metadata() or ()).get("authorization"))
        width = len(RANKING_FEATURES)
        return kserve_pb2.ModelMetadataResponse(
            name=request.name, versions=["1"], platform="onnxruntime_onnx",
            inputs=[kserve_pb2.ModelMetadataResponse.TensorMetadata(
                name="features", datatype="FP32", shape=[-1, width])],
            outputs=[kserve_pb2.ModelMetadataResponse.TensorMetadata(
                name="scores", datatype="FP32", shape=[-1, 1])],
        )  # fmt: skip

    async def ModelConfig(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "no model config here")

    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        self.headers.append(dict(context.invocation_metadata() or ()).get("authorization"))
        rows, width = request.inputs[0].shape
        features = np.frombuffer(request.raw_input_contents[0], np.float32).reshape(rows, width)
        scores = features.sum(axis=1, dtype=np.float32)
        return kserve_pb2.ModelInferResponse(
            model_name=request.model_name, model_version="1",
            outputs=[kserve_pb2.ModelInferResponse.InferOutputTensor(
                name="scores", datatype="FP32", shape=[rows, 1])],
            raw_output_contents=[scores.tobytes()],
        )  # fmt: skip


async def test_the_model_server_client_takes_mutual_tls_and_its_token(
    tmp_path: Path, certificates: LayoutCertificates
) -> None:
    model_server = FakeModelServer()
    server = grpc.aio.server()
    kserve_grpc.add_GRPCInferenceServiceServicer_to_server(model_server, server)
    credentials = grpc.ssl_server_credentials(
        [(certificates.server.key.read_bytes(), certificates.server.cert.read_bytes())],
        root_certificates=certificates.ca.read_bytes(),
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    url = f"127.0.0.1:{port}"
    identity = certificates.client("retrieve")
    tls = {"enabled": True, "ca_file": str(certificates.ca), "cert_file": str(identity.cert),
           "key_file": str(identity.key), "server_name_override": "localhost"}  # fmt: skip
    other = ensure_layout_certificates(tmp_path / "other-tls")
    try:
        # The platform's own TLS does not apply to the model server: it has its own section.
        ranker = TritonRanker(url, "ranker", outbound=outbound(
            None, model_server_tls=tls, tokens={"model_server": TOKEN}
        ))  # fmt: skip
        try:
            await ranker.connect(timeout=5)
            features = np.ones((3, len(RANKING_FEATURES)), np.float32)
            scores = await ranker.score(features, timeout=5)
        finally:
            await ranker.close()
        assert scores.tolist() == [float(len(RANKING_FEATURES))] * 3
        assert model_server.headers == [f"Bearer {TOKEN}"] * 2

        wrong = TritonRanker(url, "ranker", outbound=outbound(
            None, model_server_tls=tls | {"ca_file": str(other.ca)}, token=TOKEN
        ))  # fmt: skip
        try:
            with pytest.raises(Unavailable) as caught:
                await wrong.connect(timeout=5)
        finally:
            await wrong.close()
        assert TOKEN not in str(caught.value)
    finally:
        await server.stop(None)


def test_outbound_settings_are_checked_at_startup(
    tmp_path: Path, certificates: LayoutCertificates
) -> None:
    cert, key = str(certificates.server.cert), str(certificates.server.key)
    refused = [
        ({"tls": {"enabled": True, "cert_file": cert}}, "cert_file and key_file go together"),
        ({"tls": {"ca_file": cert}}, "ca_file set without enabled = true"),
        ({"tls": {"enabled": True, "ca_file": str(tmp_path / "none.crt")}}, "ca_file"),
        ({"model_server_tls": {"enabled": True, "key_file": key}}, "go together"),
        ({"tokens": {"retreive": TOKEN}}, "retreive"),
        ({"token": "two words " + TOKEN}, "printable ASCII without spaces"),
    ]
    for section, expected in refused:
        with pytest.raises(ConfigurationError) as caught:
            load_settings(outbound=section)
        assert expected in caught.value.message, section
        assert TOKEN not in caught.value.message

    settings = load_settings(outbound={"token": TOKEN, "tokens": {"rank": RETRIEVE_TOKEN}})
    assert TOKEN not in settings.model_dump_json()
    assert RETRIEVE_TOKEN not in repr(settings)
    security = channel_security("shards", settings.outbound, "127.0.0.1:1")
    assert not security.tls
    assert TOKEN not in repr(security)
    assert TOKEN not in repr(BearerToken(settings.outbound.token))  # type: ignore[arg-type]

    # A file that is no PEM certificate is named before any handshake fails.
    (tmp_path / "empty.crt").write_text("not a certificate\n")
    with pytest.raises(ConfigurationError, match=r"empty\.crt holds no PEM certificate"):
        channel_security("retrieve", outbound(None, tls={
            "enabled": True, "ca_file": str(tmp_path / "empty.crt")
        }), "127.0.0.1:1")  # fmt: skip


def test_a_token_over_plaintext_to_another_machine_is_logged_not_its_value(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = outbound(None, token=TOKEN)
    for address in ["127.0.0.1:50051", "localhost:1", "[::1]:1", "dns:///localhost:1"]:
        assert channel_security("rank", settings, address).token is not None
    assert not caplog.records
    channel_security("rank", settings, "10.0.0.5:50051")
    channel_security("rank", OutboundSettings(), "10.0.0.5:50051")  # no token: nothing to say
    (warning,) = caplog.records
    assert warning.levelno == logging.WARNING
    assert warning.target == "10.0.0.5:50051"  # type: ignore[attr-defined]
    assert TOKEN not in caplog.text


def probed(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The startup probe's records (the background dependency checks log too)."""
    return [r for r in caplog.records if r.name == "recsys.adapters.dependency_probe"]


@pytest.mark.parametrize("tls_outbound", [False, True])
async def test_recommend_logs_an_error_when_its_dependencies_refuse_its_channel(
    mtls_dependency: tuple[RecordingDependency, GrpcApplication],
    certificates: LayoutCertificates,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    tls_outbound: bool,
) -> None:
    """The reported case: TLS on every server, Recommend's channels plaintext. Readiness does
    not wait for the probe; the ERROR names the dependency and the cause."""
    from recsys import services

    _, app = mtls_dependency
    settings = make_settings(
        tmp_path,
        recommend={"retrieve_target": app.address, "rank_target": app.address},
        outbound=outbound(certificates if tls_outbound else None).model_dump(),
    )
    recommend = await services.build_application(settings, ["recommend"])
    with caplog.at_level(logging.INFO, logger="recsys.adapters.dependency_probe"):
        await recommend.start()
        try:
            for _ in range(100):
                if len(probed(caplog)) == 2:
                    break
                await asyncio.sleep(0.1)
        finally:
            await recommend.shutdown()
    outcomes = sorted((record.dependency, record.levelname) for record in probed(caplog))  # type: ignore[attr-defined]
    level = "INFO" if tls_outbound else "ERROR"
    assert outcomes == [("rank service", level), ("retrieve service", level)]


class GuardedHealth(health_pb2_grpc.HealthServicer):
    """Health behind caller authentication: no token is UNAUTHENTICATED, the token of a caller
    not allowed to check health is PERMISSION_DENIED."""

    async def Check(  # noqa: N802
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        header = dict(context.invocation_metadata() or ()).get("authorization")
        if header != f"Bearer {TOKEN}":
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "no known caller")
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, "not allowed")
        raise AssertionError


async def test_the_probe_tells_refused_credentials_from_a_refused_method(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(GuardedHealth(), server)
    target = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    await server.start()
    try:
        for settings, reachable in [
            (OutboundSettings(), False),  # our credentials are refused: an ERROR
            (outbound(None, token=TOKEN), True),  # accepted, just not allowed on Health
        ]:
            caplog.clear()
            channel = outbound_channel(target, "shards", settings)
            try:
                assert await probe_dependency("shard", target, channel) is reachable
            finally:
                await channel.close()
            errors = [record for record in caplog.records if record.levelno == logging.ERROR]
            assert len(errors) == (0 if reachable else 1)
            assert all("refuses our credentials" in e.cause for e in errors)  # type: ignore[attr-defined]
    finally:
        await server.stop(None)
