"""Tiered ranking by user value on ML-100K: the cost and the quality of each tier, in one run.

Trains on the evaluation's random split (75/25 per user), deploys the artifacts as `recsys
eval` does, and ranks each test user's 1000 retrieved candidates (seen items removed) with the
full model for everyone, the small distilled model for everyone, and the tiered routing at a
few thresholds (the default `rank.full_model_min_activity` among them): NDCG@10 of the served
order through the evaluation's own `OfflineRecommender` and `evaluate_lists`.

Cost: each model's ONNX Runtime call on 1000 real candidate rows (one thread), the two models
interleaved call by call so both see the same machine: latency p50/p99 and CPU time per call.
A tier's cost is its users' share times its model's CPU time. The full model runs in process
here; behind Triton it also pays the round trip (bench/rank.py measures that), which the small
tier saves as well.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime

from bench.common import ROOT, latency_summary
from recsys.adapters.rankers.onnx import OnnxRanker
from recsys.data.movielens import load_movielens
from recsys.deploy.sample import prepare_deployment
from recsys.domain.circuit_breaker import CircuitBreaker
from recsys.domain.rank_routing import RoutingPolicy, TieredRankingChain, user_activity
from recsys.domain.ranking import RankingChain, RankingOutcome
from recsys.domain.scoring import CandidateScorer
from recsys.evaluation.evaluate import (
    OfflineRecommender,
    Protocol,
    split,
    training_catalogue,
)
from recsys.evaluation.metrics import evaluate_lists
from recsys.ranking.model_repository import ModelRepository
from recsys.settings import RankSettings
from recsys.training.dataset import InteractionTable
from recsys.training.pipeline import train_models

MOVIELENS = Path(os.environ.get("BENCH_MOVIELENS", ROOT.parent / "shared" / "data" / "ml-100k"))
CANDIDATES = 1000
K = 10
CALLS = int(os.environ.get("BENCH_RANK_TIERS_CALLS", "2000"))
SERVER_CALLS = int(os.environ.get("BENCH_RANK_TIERS_SERVER_CALLS", "500"))
# Shares of users on the full model besides the default threshold's: the seed's 20% and two
# neighbours, as thresholds at those quantiles of the measured activity.
FULL_SHARES = (0.5, 0.1)
FloatArray = npt.NDArray[np.float32]


class _Recording(RankingChain):
    """The full model's chain, also keeping each request's feature matrix and activity."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.matrices: list[FloatArray] = []

    async def rank(self, features: FloatArray) -> RankingOutcome:
        self.matrices.append(features)
        return await super().rank(features)


def _breaker() -> CircuitBreaker:
    return CircuitBreaker("bench-ranking-model", failure_threshold=1_000_000)


async def _quality(
    catalogue: Any, models: Any, offline: OfflineRecommender, scorer: CandidateScorer, test: Any
) -> tuple[float, float]:
    """NDCG@K and P@K of the ranked lists with `scorer`, as `recsys eval` measures them."""
    recommender = OfflineRecommender(
        catalogue,
        models,
        shards=offline.shards,
        features=offline.features,
        scorer=scorer,
        mix=offline.mix,
        neighbours=offline.neighbours,
        history_limit=offline.history_limit,
    )
    train = models.table
    relevant: dict[str, set[int]] = {}
    for user_row, items in enumerate(test.items_by_user()):
        if len(items):
            relevant[train.user_ids[user_row]] = set(train.item_ids[items].tolist())
    rows = {user: row for row, user in enumerate(train.user_ids)}
    lists = {user: await recommender.ranked(rows[user], K) for user in relevant}
    metrics = evaluate_lists(
        lists,
        relevant,
        category_of={item.item_id: item.category for item in catalogue.items},
        catalogue_size=len(catalogue.items),
        k=K,
    )
    return metrics.ndcg, metrics.precision


def _cost(full: Path, small: Path, matrix: FloatArray) -> dict[str, dict[str, float]]:
    """Both models on the same matrix, interleaved call by call: latency and CPU time."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    sessions = {
        name: onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        for name, path in (("full", full), ("small", small))
    }
    for session in sessions.values():
        for _ in range(50):
            session.run(["scores"], {"features": matrix})
    wall: dict[str, list[float]] = {name: [] for name in sessions}
    cpu: dict[str, float] = dict.fromkeys(sessions, 0.0)
    for _ in range(CALLS):
        for name, session in sessions.items():
            cpu_began, began = time.thread_time(), time.perf_counter()
            session.run(["scores"], {"features": matrix})
            wall[name].append(time.perf_counter() - began)
            cpu[name] += time.thread_time() - cpu_began
    return {
        name: {**latency_summary(wall[name]), "cpu_ms": round(cpu[name] / CALLS * 1000, 4)}
        for name in sessions
    }


def _cpu_seconds_of(pid: int) -> float:
    """User and system CPU time of a process, from /proc (utime and stime, in clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _cost_through_server(full: Path, matrix: FloatArray) -> dict[str, float]:
    """The full model as the Rank service calls Triton: `TritonRanker.score` against MLServer
    (KServe V2 gRPC) running the same ONNX file. CPU time: this process's (the client and its
    gRPC threads) plus the server process's, per call."""
    from recsys.adapters.rankers.triton import TritonRanker
    from tests.support.mlserver import prepare

    with tempfile.TemporaryDirectory(prefix="recsys-bench-mlserver-") as folder:
        server = prepare(Path(folder), full)
        server.start()
        try:
            assert server.process is not None
            ranker = TritonRanker(server.url, "ranker")
            await ranker.connect()
            for _ in range(50):
                await ranker.score(matrix, timeout=10)
            samples, client_cpu = [], 0.0
            server_began = _cpu_seconds_of(server.process.pid)
            for _ in range(SERVER_CALLS):
                cpu_began, began = time.process_time(), time.perf_counter()
                await ranker.score(matrix, timeout=10)
                samples.append(time.perf_counter() - began)
                client_cpu += time.process_time() - cpu_began
            server_cpu = _cpu_seconds_of(server.process.pid) - server_began
            await ranker.close()
        finally:
            server.stop()
    cpu_ms = (client_cpu + server_cpu) / SERVER_CALLS * 1000
    return {**latency_summary(samples), "cpu_ms": round(cpu_ms, 4)}


async def _run() -> dict[str, Any]:
    catalogue = load_movielens(MOVIELENS)
    table = InteractionTable.from_catalogue(catalogue)
    train, test = split(table, Protocol.RANDOM, 42)
    models = await asyncio.to_thread(train_models, catalogue, train)
    with tempfile.TemporaryDirectory(prefix="recsys-bench-tiers-") as folder:
        deployment = await prepare_deployment(
            training_catalogue(catalogue, models), models, Path(folder) / "deployment"
        )
        offline = await OfflineRecommender.load(catalogue, models, deployment, CANDIDATES)
        try:
            return await _measure(catalogue, models, offline, deployment.folder, test)
        finally:
            await offline.close()


async def _measure(
    catalogue: Any, models: Any, offline: OfflineRecommender, folder: Path, test: Any
) -> dict[str, Any]:
    rank = RankSettings()
    repository = folder / "models"
    full = offline.scorer.chain.primary
    small = OnnxRanker(ModelRepository(repository, rank.small_model_name))
    small.load()
    timeout = 10.0

    def scorer(chain: RankingChain) -> CandidateScorer:
        return CandidateScorer(chain, offline.features, feature_timeout_seconds=timeout)

    recording = _Recording(full, breaker=_breaker(), timeout_seconds=timeout)
    full_quality = await _quality(catalogue, models, offline, scorer(recording), test)
    small_chain = RankingChain(small, breaker=_breaker(), timeout_seconds=timeout)
    small_quality = await _quality(catalogue, models, offline, scorer(small_chain), test)

    activity = np.array([user_activity(matrix) for matrix in recording.matrices])
    counts = np.bincount(models.table.user_rows, minlength=models.table.user_count)
    tested = [models.table.user_ids.index(user) for user in _tested_users(models, test)]
    if len(tested) != len(activity):
        raise RuntimeError("a tested user had no candidates: activities do not line up")
    correlation = _spearman(activity, counts[tested].astype(np.float64))
    full_version = full.model_version.rpartition(":")[2]
    cost = _cost(
        repository / rank.model_name / full_version / "model.onnx",
        repository / rank.small_model_name / full_version / "model.onnx",
        _thousand_rows(recording.matrices),
    )
    cost["full_via_mlserver"] = await _cost_through_server(
        repository / rank.model_name / full_version / "model.onnx",
        _thousand_rows(recording.matrices),
    )
    full_cpu, small_cpu = cost["full"]["cpu_ms"], cost["small"]["cpu_ms"]
    server_cpu = cost["full_via_mlserver"]["cpu_ms"]

    def row(name: str, share: float, quality: tuple[float, float], cpu: float) -> dict[str, Any]:
        return {
            "ranking": name,
            "users on the full model": f"{share:.0%}",
            f"NDCG@{K}": round(quality[0], 4),
            f"P@{K}": round(quality[1], 4),
            "model CPU ms / 1000 candidates": round(cpu, 4),
            "model cost vs full": f"{cpu / full_cpu:.0%}",
        }

    rows = [
        row("full model for everyone", 1.0, full_quality, full_cpu),
        row("small model for everyone", 0.0, small_quality, small_cpu),
    ]
    thresholds = [(rank.full_model_min_activity, "default")] + [
        (float(np.quantile(activity, 1 - share)), f"top {share:.0%} of users")
        for share in FULL_SHARES
    ]
    tiers = []
    for threshold, label in thresholds:
        routed: list[str] = []
        chain = TieredRankingChain(
            full,
            small,
            RoutingPolicy(threshold),
            breaker=_breaker(),
            timeout_seconds=timeout,
            on_route=routed.append,
        )
        quality = await _quality(catalogue, models, offline, scorer(chain), test)
        share = routed.count("full") / len(routed)
        cpu = share * full_cpu + (1 - share) * small_cpu
        rows.append(row(f"tiered, activity >= {threshold:.3f} ({label})", share, quality, cpu))
        tiers.append(
            {
                "threshold": round(threshold, 4),
                "full_share": round(share, 4),
                "ndcg": round(quality[0], 4),
                "cost_vs_full": round(cpu / full_cpu, 4),
                "cost_vs_server": round(
                    (share * server_cpu + (1 - share) * small_cpu) / server_cpu, 4
                ),
            }
        )
    await small.close()
    default = tiers[0]
    return {
        "title": "Tiered ranking by user value (ML-100K, random split, 1000 candidates)",
        "description": (
            "NDCG@10 and P@10 of the ranked lists (`recsys eval`'s offline path) with the full "
            "LightGBM ranker, the small model distilled from it, and tiered routing (a user "
            "whose mean user_item_dot over the candidates reaches the threshold gets the full "
            "model); model cost: ONNX Runtime CPU time per call of 1000 candidates, one "
            "thread, the two models interleaved, a tier's cost weighted by its share of users."
        ),
        "rows": rows,
        "latency": cost,
        "activity_interactions_spearman": round(correlation, 4),
        "tiers": tiers,
        "conclusion": (
            f"Per call of 1000 candidates: full model in process {_said(cost['full'])}; "
            f"through MLServer {_said(cost['full_via_mlserver'])}; small model "
            f"{_said(cost['small'])}. At the default threshold {default['full_share']:.0%} of "
            f"users get the full model: model CPU {default['cost_vs_full']:.0%} of the full "
            f"model's for everyone in process, {default['cost_vs_server']:.0%} with the full "
            f"model behind the server. The activity signal's Spearman correlation with users' "
            f"training interaction counts: {correlation:.2f}."
        ),
    }


def _said(cost: dict[str, float]) -> str:
    return f"p50 {cost['p50_ms']} ms, p99 {cost['p99_ms']} ms, CPU {cost['cpu_ms']} ms"


def _tested_users(models: Any, test: Any) -> list[str]:
    """Users with held-out items, in the order `_quality` ranks them."""
    return [
        models.table.user_ids[row] for row, items in enumerate(test.items_by_user()) if len(items)
    ]


def _spearman(left: npt.NDArray[np.float64], right: npt.NDArray[np.float64]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(left, right).statistic)


def _thousand_rows(matrices: list[FloatArray]) -> FloatArray:
    """1000 real candidate rows (users' matrices stacked; most users have fewer unseen)."""
    stacked = np.concatenate(matrices)
    return np.ascontiguousarray(stacked[:CANDIDATES])


def run() -> dict[str, Any]:
    return asyncio.run(_run())
