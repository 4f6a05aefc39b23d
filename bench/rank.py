"""Rank 1000 candidates: the Rank RPC with the in-process ONNX model, a bare ONNX Runtime call
on the same feature matrix (the limit), an empty gRPC round trip, and the Rank RPC with the
Triton backend against MLServer (a KServe V2 server running the same ONNX file), in one run."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime

from bench import processes
from bench.common import ROOT, latency_summary
from bench.grpc_round_trip import _measure as measure_round_trip
from bench.grpc_round_trip import _serve as serve_round_trip
from recsys.domain.ranking import RANKING_FEATURES
from recsys.v1 import rank_service_pb2
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


def empty_round_trip() -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    ports = context.Queue()
    process = context.Process(target=serve_round_trip, args=("bare", ports), daemon=True)
    process.start()
    try:
        return asyncio.run(measure_round_trip(ports.get(timeout=30)))
    finally:
        process.terminate()
        process.join(timeout=10)


def rank_request() -> rank_service_pb2.RankRequest:
    rng = np.random.default_rng(1)
    return rank_service_pb2.RankRequest(
        user_id="bench_user",
        candidates=[
            rank_service_pb2.RankCandidate(item_id=item, candidate_score=float(score))
            for item, score in zip(range(CANDIDATES), rng.random(CANDIDATES), strict=True)
        ],
    )


async def measure_rank(address: str) -> dict[str, Any]:
    request = rank_request()
    options = ClientOptions(target=address, timeout_seconds=10, retry=None)
    async with AsyncRecsysClient(options) as client:
        call = client.rank_stub.Rank
        for _ in range(50):
            await call(request, timeout=10)
        samples = []
        backend = 0
        for _ in range(CALLS):
            began = time.perf_counter()
            response = await call(request, timeout=10)
            samples.append(time.perf_counter() - began)
            backend = response.backend
            assert len(response.items) == CANDIDATES

        async def caller() -> None:
            for _ in range(CALLS // CONCURRENCY):
                await call(request, timeout=10)

        began = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(CONCURRENCY)))
        throughput = (CALLS // CONCURRENCY) * CONCURRENCY / (time.perf_counter() - began)
    return {**latency_summary(samples), "throughput_rps": round(throughput, 1), "backend": backend}


def run() -> dict[str, Any]:
    from tests.support.mlserver import prepare

    rows: list[dict[str, Any]] = []
    onnx = bare_onnx()
    rows.append({"setup": "bare ONNX Runtime session.run (in-process, 1 thread)", **onnx})
    trip = empty_round_trip()
    rows.append({"setup": "empty gRPC round trip (bare grpc.aio)", **trip})
    environment = {
        "RECSYS_RANK__MODEL_REPOSITORY": str(ROOT / "triton_models"),
        "RECSYS_RANK__RELOAD_POLL_SECONDS": "0",
        "RECSYS_LOGGING__ACCESS_LOG": "false",
        "RECSYS_SERVER__SHUTDOWN_DRAIN_SECONDS": "0",
    }
    server = processes.wait_ready(processes.start(["rank"], environment))
    try:
        rows.append(
            {
                "setup": "Rank RPC, OnnxRanker (embedded default)",
                **asyncio.run(measure_rank(server.address)),
            }
        )
    finally:
        server.stop()
    mlserver = prepare(Path(tempfile.mkdtemp(prefix="recsys-mlserver-")), MODEL)
    mlserver.start()
    try:
        triton_env = {
            **environment,
            "RECSYS_RANK__BACKEND": "triton",
            "RECSYS_RANK__TRITON_URL": mlserver.url,
        }
        server = processes.wait_ready(processes.start(["rank"], triton_env))
        try:
            rows.append(
                {
                    "setup": "Rank RPC, TritonRanker -> MLServer (KServe V2 gRPC)",
                    **asyncio.run(measure_rank(server.address)),
                }
            )
        finally:
            server.stop()
    finally:
        mlserver.stop()
    limit = onnx["p50_ms"] + trip["p50_ms"]
    rank_rpc = rows[2]["p50_ms"]
    for row in rows:
        row.setdefault("throughput_rps", "-")
        row.setdefault("backend", "-")
        row["p50_vs_limit"] = f"{row['p50_ms'] / limit:.2f}x"
    conclusion = (
        f"The limit (bare ONNX Runtime {onnx['p50_ms']} ms + empty round trip {trip['p50_ms']} ms) "
        f"is {limit:.3f} ms at p50; the Rank RPC with OnnxRanker takes {rank_rpc} ms, "
        f"{rank_rpc / limit:.2f}x the limit (aim: 1.5x). The rest is decoding 1000 candidates "
        f"from the request, reading their features, assembling the matrix, the executor hop, "
        f"sorting, and encoding 1000 scored items in Python protobuf, plus the recsys "
        f"interceptor chain. backend 1 = MODEL."
    )
    return {
        "title": f"Rank {CANDIDATES} candidates",
        "description": (
            f"{CALLS} sequential calls for latency, then {CONCURRENCY} concurrent callers for "
            "throughput; Rank servers in their own processes, client in the benchmark process."
        ),
        "rows": rows,
        "conclusion": conclusion,
    }
