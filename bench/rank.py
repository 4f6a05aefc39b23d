"""Rank 1000 candidates: the Rank RPC with the in-process ONNX model (candidates as packed
columns, and as the sub-messages old clients send, interleaved call by call), a bare ONNX
Runtime call on the same feature matrix plus an empty gRPC round trip (the limit), the scorer
and the servicer in-process without gRPC (where the rest of the time goes), and the Rank RPC
with the Triton backend against MLServer (a KServe V2 server running the same ONNX file), in
one run."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime

from bench import processes
from bench.common import ROOT, latency_summary
from bench.grpc_round_trip import _measure as measure_round_trip
from bench.grpc_round_trip import _serve as serve_round_trip
from recsys.adapters.features.in_memory import InMemoryFeatureStore
from recsys.adapters.rankers.onnx import OnnxRanker
from recsys.adapters.remote import ranked_columns
from recsys.domain.circuit_breaker import CircuitBreaker
from recsys.domain.ranking import RANKING_FEATURES, RankingChain
from recsys.domain.requests import RequestContext
from recsys.domain.scoring import CandidateScorer
from recsys.ranking.model_repository import ModelRepository
from recsys.servicers.rank import RankServicer
from recsys.settings import RankSettings
from recsys.v1 import rank_service_pb2
from recsys.v1 import retrieve_service_pb2 as retrieve_pb2
from recsys_client import AsyncRecsysClient, ClientOptions

CANDIDATES = 1000
CALLS = int(os.environ.get("BENCH_RANK_CALLS", "1000"))
CONCURRENCY = 8
MODEL = ROOT / "triton_models" / "ranker" / "1" / "model.onnx"


def bare_onnx() -> dict[str, Any]:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(MODEL), options, providers=["CPUExecutionProvider"])
    features = np.random.default_rng(0).random((CANDIDATES, len(RANKING_FEATURES)), np.float32)
    for _ in range(50):
        session.run(["scores"], {"features": features})
    samples = []
    for _ in range(CALLS):
        began = time.perf_counter()
        session.run(["scores"], {"features": features})
        samples.append(time.perf_counter() - began)
    return latency_summary(samples)


def empty_round_trip(mode: str) -> dict[str, Any]:
    """`mode`: "bare" (plain grpc.aio) or "recsys" (GrpcApplication, its interceptor chain)."""
    context = multiprocessing.get_context("spawn")
    ports = context.Queue()
    process = context.Process(target=serve_round_trip, args=(mode, ports), daemon=True)
    process.start()
    try:
        return asyncio.run(measure_round_trip(ports.get(timeout=30)))
    finally:
        process.terminate()
        process.join(timeout=10)


def candidates() -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    rng = np.random.default_rng(1)
    return np.arange(CANDIDATES, dtype=np.int64), rng.random(CANDIDATES).astype(np.float32)


# The two request layouts, each asking for the same layout back.
LAYOUTS = {
    "sub-messages": "Rank RPC, OnnxRanker, candidates as sub-messages (old clients)",
    "columns": "Rank RPC, OnnxRanker, candidates as packed columns",
}


def rank_requests() -> dict[str, rank_service_pb2.RankRequest]:
    item_ids, scores = candidates()
    return {
        "sub-messages": rank_service_pb2.RankRequest(
            user_id="bench_user",
            candidates=[
                rank_service_pb2.RankCandidate(item_id=item, candidate_score=score)
                for item, score in zip(item_ids.tolist(), scores.tolist(), strict=True)
            ],
        ),
        "columns": rank_service_pb2.RankRequest(
            user_id="bench_user",
            candidate_item_ids=item_ids.tolist(),
            candidate_scores=scores.tolist(),
            response_layout=retrieve_pb2.CANDIDATE_LAYOUT_COLUMNS,
        ),
    }


def ranked_count(response: rank_service_pb2.RankResponse) -> int:
    return len(response.items) or len(response.item_ids)


async def measure_rank(address: str, layouts: list[str]) -> dict[str, dict[str, Any]]:
    """Latency of each layout (the call, its encoding and parsing included; reading the ids
    and scores out afterwards is not), interleaved call by call, alternating which goes first,
    so load from elsewhere on the machine hits them alike; then throughput of each in turn."""
    requests = rank_requests()
    options = ClientOptions(target=address, timeout_seconds=10, retry=None)
    samples: dict[str, list[float]] = {layout: [] for layout in layouts}
    backends: dict[str, int] = {}
    async with AsyncRecsysClient(options) as client:
        call = client.rank_stub.Rank
        for layout in layouts * 50:
            await call(requests[layout], timeout=10)
        for round_number in range(CALLS):
            order = layouts if round_number % 2 == 0 else layouts[::-1]
            for layout in order:
                began = time.perf_counter()
                response = await call(requests[layout], timeout=10)
                samples[layout].append(time.perf_counter() - began)
                backends[layout] = response.backend
                ranked_ids, _ = ranked_columns(response)
                assert len(ranked_ids) == CANDIDATES
        results: dict[str, dict[str, Any]] = {}
        for layout in layouts:
            request = requests[layout]

            async def caller(request: rank_service_pb2.RankRequest = request) -> None:
                for _ in range(CALLS // CONCURRENCY):
                    await call(request, timeout=10)

            began = time.perf_counter()
            await asyncio.gather(*(caller() for _ in range(CONCURRENCY)))
            throughput = (CALLS // CONCURRENCY) * CONCURRENCY / (time.perf_counter() - began)
            results[layout] = {
                **latency_summary(samples[layout]),
                "throughput_rps": round(throughput, 1),
                "backend": backends[layout],
            }
    return results


async def measure_in_process() -> dict[str, dict[str, Any]]:
    """The Rank service's own work without gRPC: the scorer (features from an empty in-memory
    store, as the RPC rows read, the matrix, the model, the order) and the servicer on a
    packed-column request (adds decoding, validation and encoding), wired as `build()` wires
    them with the default settings."""
    settings = RankSettings(model_repository=ROOT / "triton_models")
    model = OnnxRanker(
        ModelRepository(settings.model_repository, settings.model_name),
        threads=settings.onnx_threads,
        inline_max_seconds=settings.onnx_inline_max_ms / 1000,
    )
    model.load()
    chain = RankingChain(
        model,
        breaker=CircuitBreaker("ranking-model"),
        timeout_seconds=settings.timeout_ms / 1000,
    )
    scorer = CandidateScorer(
        chain,
        InMemoryFeatureStore(),
        feature_timeout_seconds=settings.feature_timeout_ms / 1000,
    )
    servicer = RankServicer(scorer, settings)
    item_ids, scores = candidates()
    request = rank_requests()["columns"]
    context = RequestContext()
    samples: dict[str, list[float]] = {"scorer": [], "servicer": []}
    for _ in range(50):
        await servicer.Rank(request, None)
    for _ in range(CALLS):
        began = time.perf_counter()
        await scorer.score("bench_user", item_ids, scores, context)
        samples["scorer"].append(time.perf_counter() - began)
        began = time.perf_counter()
        await servicer.Rank(request, None)
        samples["servicer"].append(time.perf_counter() - began)
    return {name: latency_summary(values) for name, values in samples.items()}


def measure_triton(folder: Path, environment: dict[str, str]) -> dict[str, Any]:
    from tests.support.mlserver import prepare

    mlserver = prepare(folder, MODEL)
    mlserver.start()
    try:
        triton_env = {
            **environment,
            "RECSYS_RANK__BACKEND": "triton",
            "RECSYS_RANK__TRITON_URL": mlserver.url,
        }
        server = processes.wait_ready(processes.start(["rank"], triton_env))
        try:
            return asyncio.run(measure_rank(server.address, ["columns"]))["columns"]
        finally:
            server.stop()
    finally:
        mlserver.stop()


def run() -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    onnx = bare_onnx()
    rows.append({"setup": "bare ONNX Runtime session.run (in-process, 1 thread)", **onnx})
    trip = empty_round_trip("bare")
    rows.append({"setup": "empty gRPC round trip (bare grpc.aio)", **trip})
    recsys_trip = empty_round_trip("recsys")
    rows.append(
        {"setup": "empty gRPC round trip (recsys server, its interceptor chain)", **recsys_trip}
    )
    environment = {
        "RECSYS_RANK__MODEL_REPOSITORY": str(ROOT / "triton_models"),
        "RECSYS_RANK__RELOAD_POLL_SECONDS": "0",
        "RECSYS_LOGGING__ACCESS_LOG": "false",
        "RECSYS_SERVER__SHUTDOWN_DRAIN_SECONDS": "0",
    }
    in_process = asyncio.run(measure_in_process())
    rows.append(
        {
            "setup": "in-process CandidateScorer.score (features, matrix, model, order; no gRPC)",
            **in_process["scorer"],
        }
    )
    rows.append(
        {
            "setup": "in-process RankServicer.Rank, packed columns (+ decode, checks, encode)",
            **in_process["servicer"],
        }
    )
    server = processes.wait_ready(processes.start(["rank"], environment))
    try:
        measured = asyncio.run(measure_rank(server.address, list(LAYOUTS)))
    finally:
        server.stop()
    for layout, setup in LAYOUTS.items():
        rows.append({"setup": setup, **measured[layout]})
    folder = Path(tempfile.mkdtemp(prefix="recsys-mlserver-"))
    try:
        rows.append(
            {
                "setup": "Rank RPC, TritonRanker -> MLServer (KServe V2 gRPC), packed columns",
                **measure_triton(folder, environment),
            }
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    limit = onnx["p50_ms"] + trip["p50_ms"]
    columns = measured["columns"]["p50_ms"]
    messages = measured["sub-messages"]["p50_ms"]
    scorer = in_process["scorer"]["p50_ms"]
    servicer = in_process["servicer"]["p50_ms"]
    for row in rows:
        row.setdefault("throughput_rps", "-")
        row.setdefault("backend", "-")
        row["p50_vs_limit"] = f"{row['p50_ms'] / limit:.2f}x"
    chain = recsys_trip["p50_ms"] - trip["p50_ms"]
    rest = columns - servicer - recsys_trip["p50_ms"]
    conclusion = (
        f"The limit (bare ONNX Runtime {onnx['p50_ms']} ms + empty round trip {trip['p50_ms']} ms) "
        f"is {limit:.3f} ms at p50. The Rank RPC with OnnxRanker and packed columns takes "
        f"{columns} ms, {columns / limit:.2f}x the limit (aim: 1.5x); with the sub-messages old "
        f"clients send, {messages} ms ({messages / limit:.2f}x), measured call by call in the "
        f"same run. Where the packed call's time goes: the recsys interceptor chain "
        f"{chain:.3f} ms (an empty call to a recsys server less a bare one); in-process, the "
        f"scorer {scorer} ms (reading the features, the matrix, the model, the order) and the "
        f"servicer {servicer - scorer:.3f} ms more (decoding, checks, encoding); the remaining "
        f"{rest:.3f} ms are gRPC moving ~6 KB each way and the client's encoding and parsing. "
        f"backend 1 = MODEL."
    )
    return {
        "title": f"Rank {CANDIDATES} candidates",
        "description": (
            f"{CALLS} sequential calls for latency (the two request layouts interleaved call "
            f"by call), then {CONCURRENCY} concurrent callers for throughput; Rank servers in "
            "their own processes, client in the benchmark process; the in-process rows wire the "
            "scorer and servicer as the Rank server does, with the default settings and an empty "
            "in-memory feature store (as the servers have)."
        ),
        "rows": rows,
        "conclusion": conclusion,
    }
