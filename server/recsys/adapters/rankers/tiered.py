"""Tiered ranking (rank.backend "tiered"): the full model (Triton, or ONNX in process) for
engaged users, the small distilled model in process for the rest (recsys.domain.rank_routing).

The Rank service does not call this ranker's `score` itself: `servicers.rank.build` takes the
two models and the policy out of it and builds a `TieredRankingChain`, so the full model's
circuit breaker and CPU fallback see full-tier requests only. `score` routes the same way for
callers without a chain (benchmarks, offline tools).
"""

from __future__ import annotations

import asyncio

import numpy as np
import numpy.typing as npt

from recsys.domain.rank_routing import RoutingPolicy, Tier
from recsys.ports.ranker import Ranker
from recsys.settings import RecsysSettings


class TieredRanker(Ranker):
    def __init__(self, full: Ranker, small: Ranker, policy: RoutingPolicy) -> None:
        self.full = full
        self.small = small
        self.policy = policy
        # Only a model behind a server gains from the in-process CPU fallback.
        self.in_process = full.in_process

    @classmethod
    def from_settings(cls, settings: RecsysSettings) -> TieredRanker:
        from recsys.adapters.rankers.onnx import OnnxRanker
        from recsys.registry import create_adapter

        rank = settings.rank
        full = create_adapter("ranker", rank.tiered_full_backend, settings)
        assert isinstance(full, Ranker)
        # The small model is loaded as the in-process ranker loads the full one (threads,
        # version pin, hot reload), under its own name. `recsys train` writes both under one
        # version number, so a pinned version (a release pins it) pins the pair.
        small_settings = settings.model_copy(
            update={"rank": rank.model_copy(update={"model_name": rank.small_model_name})}
        )
        small = OnnxRanker.from_settings(small_settings)
        return cls(full, small, RoutingPolicy(rank.full_model_min_activity))

    @property
    def model_version(self) -> str:
        return self.full.model_version

    def route(self, features: npt.NDArray[np.float32]) -> tuple[Tier, Ranker]:
        tier = self.policy.tier_of(features)
        return tier, self.full if tier is Tier.FULL else self.small

    async def score(
        self, features: npt.NDArray[np.float32], *, timeout: float
    ) -> npt.NDArray[np.float32]:
        _, ranker = self.route(features)
        return await ranker.score(features, timeout=timeout)

    async def start(self) -> None:
        await self.full.start()

    async def ping(self, *, timeout: float) -> None:
        # The small model is in process: only the full one has a server to reach.
        await self.full.ping(timeout=timeout)

    async def watch(self, poll_seconds: float) -> None:
        await asyncio.gather(self.full.watch(poll_seconds), self.small.watch(poll_seconds))

    async def close(self) -> None:
        await asyncio.gather(self.full.close(), self.small.close())
