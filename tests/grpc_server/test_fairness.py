"""Per-caller fairness on a real server (TLS, bearer tokens): one caller holding many calls
open, with deadlines far longer than the server accepts, does not push another caller's calls
past their deadlines. The same load without the per-caller bound shows what it prevents."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import grpc
import pytest

from recsys.grpc_server.app import GrpcApplication, ServiceBinding
from recsys.servicers.recommend import SERVICE_NAME
from recsys.settings import load_settings
from recsys.v1 import recommend_service_pb2, recommend_service_pb2_grpc
from recsys_client import AsyncRecsysClient, ClientOptions, RecsysClientError, TlsOptions
from tests.conftest import make_settings
from tests.support.certificates import CertificateAuthority

HOG, FRONTEND = "hog", "frontend"
TOKENS = {HOG: "tok-hog-5d7a", FRONTEND: "tok-frontend-1e0c"}
HOG_CALLS = 12  # the hog keeps this many calls open, re-sending each as soon as it ends
MAX_IN_FLIGHT = 4
FRONTEND_DEADLINE = 0.5


class SlowForTheHog(recommend_service_pb2_grpc.RecommendServiceServicer):
    """Answers at once, except the hog's calls, which never finish on their own."""

    async def Recommend(  # noqa: N802
        self, request: recommend_service_pb2.RecommendRequest, context: grpc.aio.ServicerContext
    ) -> recommend_service_pb2.RecommendResponse:
        if request.user_id == HOG:
            await asyncio.sleep(3600)
        await asyncio.sleep(0.002)
        return recommend_service_pb2.RecommendResponse()


async def scenario(
    tmp_path: Path, authority: CertificateAuthority, per_caller: int
) -> tuple[list[tuple[str, float]], Counter[str], list[float]]:
    """The frontend's (code, seconds) per call, the hog's codes, and how long the hog's calls
    that ran out of time took."""
    pair = authority.issue("recsys-server", server=True)
    settings = make_settings(
        tmp_path,
        auth={"enabled": True, "tokens": TOKENS, "allow": {SERVICE_NAME: [HOG, FRONTEND]}},
        server={
            "tls": {"cert_file": str(pair.cert), "key_file": str(pair.key)},
            "max_in_flight": MAX_IN_FLIGHT,
            "max_in_flight_per_caller": per_caller,
            "max_deadline_ms": 1500,
        },
        logging={"access_log": False},
    )
    servicer = SlowForTheHog()
    binding = ServiceBinding(
        SERVICE_NAME,
        lambda server: recommend_service_pb2_grpc.add_RecommendServiceServicer_to_server(
            servicer, server
        ),
    )
    app = GrpcApplication(settings, [binding])
    await app.start()
    tls = TlsOptions(root_certificates=authority.pair.cert.read_bytes())

    def options(caller: str, timeout: float) -> ClientOptions:
        return ClientOptions(
            target=app.address,
            tls=tls,
            bearer_token=TOKENS[caller],
            timeout_seconds=timeout,
            retry=None,
        )

    hog_codes: Counter[str] = Counter()
    cut: list[float] = []
    stop = asyncio.Event()
    frontend: list[tuple[str, float]] = []
    try:
        async with (
            AsyncRecsysClient(options(HOG, 60.0)) as hog,
            AsyncRecsysClient(options(FRONTEND, FRONTEND_DEADLINE)) as client,
        ):

            async def hold_open() -> None:
                while not stop.is_set():
                    started = time.perf_counter()
                    try:
                        await hog.recommend(HOG)
                        hog_codes["OK"] += 1
                    except RecsysClientError as error:
                        hog_codes[f"{error.code.name}/{error.reason}"] += 1
                        if error.code is grpc.StatusCode.DEADLINE_EXCEEDED:
                            cut.append(time.perf_counter() - started)

            holders = [asyncio.create_task(hold_open()) for _ in range(HOG_CALLS)]
            await asyncio.sleep(0.3)  # the hog is at its bound (or holds every slot)
            finish = time.perf_counter() + 2.0  # past the hog's cut deadlines
            while time.perf_counter() < finish:
                started = time.perf_counter()
                try:
                    await client.recommend("u1")
                    code = "OK"
                except RecsysClientError as error:
                    code = f"{error.code.name}/{error.reason}"
                frontend.append((code, time.perf_counter() - started))
                await asyncio.sleep(0.02)
            stop.set()
            await asyncio.gather(*holders)
    finally:
        await app.shutdown()
    return frontend, hog_codes, cut


async def test_a_caller_at_its_bound_does_not_push_others_past_their_deadlines(
    tmp_path: Path,
) -> None:
    authority = CertificateAuthority(tmp_path)
    frontend, hog, cut = await scenario(tmp_path, authority, per_caller=MAX_IN_FLIGHT // 2)
    codes = Counter(code for code, _ in frontend)
    slowest = max(seconds for _, seconds in frontend)
    summary = f"frontend {dict(codes)}, slowest {slowest * 1000:.0f} ms; hog {dict(hog)}"
    print(summary)
    assert codes == {"OK": len(frontend)}, summary
    assert len(frontend) >= 20, summary
    assert slowest < FRONTEND_DEADLINE, summary
    # The hog's calls beyond its bound are refused as its own quota, not as an overload.
    assert hog["RESOURCE_EXHAUSTED/CALLER_CONCURRENCY"] > 0, summary
    assert "UNAVAILABLE/OVERLOADED" not in hog, summary
    # Its 60 s deadlines were cut to the server's maximum (1.5 s).
    assert hog["DEADLINE_EXCEEDED/DEADLINE_EXCEEDED"] >= MAX_IN_FLIGHT // 2, summary
    assert all(1.4 < seconds < 2.5 for seconds in cut), cut


async def test_without_the_bound_the_same_load_starves_the_other_caller(tmp_path: Path) -> None:
    authority = CertificateAuthority(tmp_path)
    frontend, hog, _ = await scenario(tmp_path, authority, per_caller=0)
    codes = Counter(code for code, _ in frontend)
    print(f"frontend {dict(codes)}; hog {dict(hog)}")
    assert codes["OK"] < len(frontend) / 2, codes
    assert set(codes) <= {"OK", "UNAVAILABLE/OVERLOADED"}, codes


@pytest.mark.parametrize(("per_caller", "limit"), [(None, 3), (2, 2), (0, 0)])
def test_the_per_caller_bound_defaults_to_half_the_slots(
    per_caller: int | None, limit: int
) -> None:
    settings = load_settings(server={"max_in_flight": 6, "max_in_flight_per_caller": per_caller})
    assert settings.server.caller_in_flight_limit == limit
