"""Candidate retrieval: fan out to every shard, fail over between replicas, merge the top k.

- Each shard is searched concurrently with a deadline from the caller's remaining time.
- A shard lists replicas; a replica that is UNAVAILABLE or too slow is followed by the next one.
- Every replica has a circuit breaker, so a dead one costs no timeout while it is open.
- Sanity check (seed "FAISS Index Failover"): an empty answer from a shard that holds items, or
  a top score under `min_top_score`, is double-checked with another replica.
- When shards still fail, the answer is built from the others and flagged partial (or the call
  fails with UNAVAILABLE in strict mode).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from recsys.deadlines import outbound_timeout
from recsys.domain.circuit_breaker import BreakerState, CircuitBreaker
from recsys.domain.observers import BreakerObserver, NullObserver, RetrievalObserver
from recsys.domain.ordering import top_k_order
from recsys.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    RecsysError,
    Unavailable,
)
from recsys.ports.shards import (
    MAX_K,
    SearchHits,
    ShardClient,
    ShardDescription,
    ShardSearchResult,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetrievalQuery:
    vector: npt.NDArray[np.float32]
    embedding_version: str
    k: int
    excluded_item_ids: frozenset[int] = frozenset()
    nprobe: int | None = None
    ef_search: int | None = None
    require_all_shards: bool = False


@dataclass(frozen=True)
class RetrievalResult:
    item_ids: npt.NDArray[np.int64]
    scores: npt.NDArray[np.float32]
    shard_ids: npt.NDArray[np.int32]
    index_version: str
    embedding_version: str
    failed_shard_ids: tuple[int, ...]

    @property
    def partial(self) -> bool:
        return bool(self.failed_shard_ids)


@dataclass(frozen=True)
class IndexDescription:
    """What the shards serve, from their Info answers."""

    dimension: int
    embedding_version: str
    metric: str
    index_versions: tuple[str, ...]
    item_counts: dict[int, int]
    # Every shard normalises (cosine scores in [-1, 1]): only then does a fixed top-score
    # threshold mean anything.
    normalized: bool = False


@dataclass
class RetrieverConfig:
    shard_timeout_seconds: float = 0.05
    # Time kept back from the caller's deadline for merging and answering.
    merge_reserve_seconds: float = 0.002
    # Sanity check threshold on the best score of a replica's answer; None disables it.
    min_top_score: float | None = 0.1
    # First-round depth per shard: k / shards * oversampling (+ a margin), never above k.
    # With items spread over shards by id, the global top k almost never needs more from one
    # shard; when it does (a full answer whose last score still makes the top k), that shard
    # is asked again for the full k, so the merged top k stays exact. 0 disables this.
    shard_oversampling: float = 2.0
    breaker_failure_threshold: int = 5
    breaker_open_seconds: float = 5.0
    breaker_half_open_fraction: float = 0.1
    breaker_success_threshold: int = 3


class _ShardFailed(Exception):
    def __init__(self, shard_id: int, reason: str) -> None:
        super().__init__(reason)
        self.shard_id = shard_id
        self.reason = reason


class Retriever:
    def __init__(
        self,
        shards: Sequence[Sequence[ShardClient]],
        *,
        config: RetrieverConfig | None = None,
        metrics: RetrievalObserver | None = None,
        breaker_metrics: BreakerObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not shards or any(not replicas for replicas in shards):
            raise ValueError("every shard needs at least one replica")
        self.config = config or RetrieverConfig()
        self.metrics: RetrievalObserver = metrics or NullObserver()
        self.breaker_metrics: BreakerObserver = breaker_metrics or NullObserver()
        self.shards = [list(replicas) for replicas in shards]
        self.breakers = [
            [
                CircuitBreaker(
                    f"shard-{shard_id}-replica-{replica_index}",
                    failure_threshold=self.config.breaker_failure_threshold,
                    open_seconds=self.config.breaker_open_seconds,
                    half_open_fraction=self.config.breaker_half_open_fraction,
                    success_threshold=self.config.breaker_success_threshold,
                    clock=clock,
                    on_transition=self._on_breaker_transition,
                )
                for replica_index in range(len(replicas))
            ]
            for shard_id, replicas in enumerate(self.shards)
        ]
        for replicas in self.breakers:
            for breaker in replicas:
                self.breaker_metrics.track(breaker.name)
        self._next_replica = [itertools.count() for _ in self.shards]
        self.description: IndexDescription | None = None

    @property
    def num_shards(self) -> int:
        return len(self.shards)

    def _on_breaker_transition(self, name: str, _: BreakerState, state: BreakerState) -> None:
        self.breaker_metrics.record(name, state.value)

    # ------------------------------------------------------------------ description

    async def refresh_description(self, timeout: float = 2.0) -> IndexDescription | None:
        """Asks every shard (first replica that answers) what it serves."""
        answers = await self._describe_all(timeout)
        known = [answer for answer in answers if answer is not None]
        if not known:
            return self.description
        misrouted = [a for a in known if a.num_shards != self.num_shards]
        if misrouted:
            logger.error(
                "shards disagree with the deployment about the number of shards",
                extra={"shard_ids": [a.shard_id for a in misrouted]},
            )
        # The newest embedding version wins during a rollout; shards still on the old one then
        # refuse its queries and count as failed until they swap.
        # A shard still loading (or empty) reports no index version and a fresh build time;
        # it must not decide what the index is.
        loaded = [answer for answer in known if answer.index_version] or known
        oldest = dt.datetime.min.replace(tzinfo=dt.UTC)
        newest = max(loaded, key=lambda answer: answer.built_at or oldest)
        self.description = IndexDescription(
            dimension=newest.dimension,
            embedding_version=newest.embedding_version,
            metric=newest.metric,
            index_versions=tuple(sorted({a.index_version for a in known})),
            item_counts={a.shard_id: a.item_count for a in known},
            normalized=all(answer.normalized for answer in loaded),
        )
        return self.description

    async def silent_shards(self, timeout: float = 1.0) -> list[int]:
        """The shards none of whose replicas answers within `timeout` (the health probe)."""
        answers = await self._describe_all(timeout)
        return [shard for shard, answer in enumerate(answers) if answer is None]

    async def _describe_all(self, timeout: float) -> list[ShardDescription | None]:
        async def describe(shard_id: int) -> ShardDescription | None:
            for replica in self.shards[shard_id]:
                try:
                    return await replica.describe(timeout=timeout)
                except RecsysError:
                    continue
            return None

        return list(await asyncio.gather(*(describe(shard) for shard in range(self.num_shards))))

    async def keep_description_fresh(self, interval_seconds: float) -> None:
        while True:
            try:
                await self.refresh_description()
            except Exception:
                logger.exception("could not refresh the index description")
            await asyncio.sleep(interval_seconds)

    async def current_description(self) -> IndexDescription:
        description = self.description or await self.refresh_description()
        if description is None:
            raise Unavailable("no index shard answered", reason="NO_SHARDS")
        return description

    # ------------------------------------------------------------------ retrieval

    def check_query(self, description: IndexDescription, dimension: int, version: str) -> None:
        if version != description.embedding_version:
            raise FailedPrecondition(
                f"the query uses embedding version {version!r} but the index was built from "
                f"{description.embedding_version!r}",
                reason="EMBEDDING_VERSION_MISMATCH",
                metadata={
                    "query_embedding_version": version,
                    "index_embedding_version": description.embedding_version,
                },
            )
        if dimension != description.dimension:
            raise FailedPrecondition(
                f"the query has dimension {dimension} but the index has {description.dimension}",
                reason="DIMENSION_MISMATCH",
            )

    async def retrieve(self, query: RetrievalQuery) -> RetrievalResult:
        description = await self.current_description()
        vector = np.asarray(query.vector, dtype=np.float32).reshape(1, -1)
        self.check_query(description, vector.shape[1], query.embedding_version)
        excluded = np.fromiter(query.excluded_item_ids, dtype=np.int64)
        full_depth = {
            shard_id: min(
                query.k + int(np.count_nonzero(excluded % self.num_shards == shard_id)), MAX_K
            )
            for shard_id in range(self.num_shards)
        }
        first_depth = {
            shard: self._first_depth(query.k, depth) for shard, depth in full_depth.items()
        }
        answers, failed = await self._fan_out(first_depth, vector, query, description)
        deeper = self._shards_needing_more(answers, first_depth, full_depth, query.k, excluded)
        if deeper:
            more, more_failed = await self._fan_out(
                {shard: full_depth[shard] for shard in deeper}, vector, query, description
            )
            answers.update(more)
            # A shard that answered shallow but not deep still contributes its first answer.
            for shard_id in more_failed:
                logger.warning("shard failed on the deeper round", extra={"shard_id": shard_id})
        results = [answers[shard_id] for shard_id in sorted(answers)]
        if failed:
            self.metrics.partial_result()
            if query.require_all_shards or not results:
                raise Unavailable(
                    f"index shards {failed} did not answer",
                    reason="SHARDS_UNAVAILABLE",
                    metadata={"failed_shard_ids": ",".join(map(str, failed))},
                )
        return self._merge(results, query.k, excluded, tuple(failed), description)

    def _first_depth(self, k: int, full: int) -> int:
        oversampling = self.config.shard_oversampling
        if oversampling <= 0 or self.num_shards == 1:
            return full
        shallow = int(np.ceil(k / self.num_shards * oversampling)) + 10
        return min(full, shallow)

    async def _fan_out(
        self,
        depths: dict[int, int],
        vector: npt.NDArray[np.float32],
        query: RetrievalQuery,
        description: IndexDescription,
    ) -> tuple[dict[int, ShardSearchResult], list[int]]:
        outcomes = await asyncio.gather(
            *(
                self._search_shard(shard_id, depth, vector, query, description)
                for shard_id, depth in depths.items()
            ),
            return_exceptions=True,
        )
        answers: dict[int, ShardSearchResult] = {}
        failed: list[int] = []
        for shard_id, outcome in zip(depths, outcomes, strict=True):
            if isinstance(outcome, ShardSearchResult):
                answers[shard_id] = outcome
            elif isinstance(outcome, _ShardFailed):
                failed.append(shard_id)
            else:
                assert isinstance(outcome, BaseException)
                raise outcome
        return answers, sorted(failed)

    @staticmethod
    def _shards_needing_more(
        answers: dict[int, ShardSearchResult],
        asked: dict[int, int],
        full: dict[int, int],
        k: int,
        excluded: npt.NDArray[np.int64],
    ) -> list[int]:
        """Shards whose shallow answer was full and may hide items of the global top k."""
        shallow = [shard for shard in answers if asked[shard] < full[shard]]
        if not shallow:
            return []
        scores = np.concatenate([answers[shard].hits[0].scores for shard in answers])
        ids = np.concatenate([answers[shard].hits[0].item_ids for shard in answers])
        if excluded.size:
            scores = scores[~np.isin(ids, excluded)]
        threshold = -np.inf if len(scores) < k else float(np.partition(-scores, k - 1)[k - 1]) * -1
        needing = []
        for shard in shallow:
            hits = answers[shard].hits[0]
            if len(hits.item_ids) >= asked[shard] and float(hits.scores[-1]) >= threshold:
                needing.append(shard)
        return needing

    def _merge(
        self,
        results: list[ShardSearchResult],
        k: int,
        excluded: npt.NDArray[np.int64],
        failed: tuple[int, ...],
        description: IndexDescription,
    ) -> RetrievalResult:
        ids = np.concatenate([r.hits[0].item_ids for r in results] or [np.empty(0, np.int64)])
        scores = np.concatenate([r.hits[0].scores for r in results] or [np.empty(0, np.float32)])
        shard_ids = np.concatenate(
            [np.full(len(r.hits[0].item_ids), r.shard_id, np.int32) for r in results]
            or [np.empty(0, np.int32)]
        )
        if excluded.size:
            keep = ~np.isin(ids, excluded)
            ids, scores, shard_ids = ids[keep], scores[keep], shard_ids[keep]
        # Top k of all shards' answers in rank order (score, then item id): a partial
        # selection, then a sort of those k only.
        order = top_k_order(ids, scores, k)
        versions = sorted({r.index_version for r in results})
        return RetrievalResult(
            item_ids=ids[order],
            scores=scores[order],
            shard_ids=shard_ids[order],
            index_version=",".join(versions),
            embedding_version=description.embedding_version,
            failed_shard_ids=failed,
        )

    async def _search_shard(
        self,
        shard_id: int,
        k: int,
        vector: npt.NDArray[np.float32],
        query: RetrievalQuery,
        description: IndexDescription,
    ) -> ShardSearchResult:
        replicas = self.shards[shard_id]
        start = next(self._next_replica[shard_id]) % len(replicas)
        order = [(start + offset) % len(replicas) for offset in range(len(replicas))]
        holds_items = description.item_counts.get(shard_id, 0) > 0
        doubtful: ShardSearchResult | None = None
        reason = "breaker_open"
        for position, replica_index in enumerate(order):
            breaker = self.breakers[shard_id][replica_index]
            if not breaker.allow():
                continue
            try:
                timeout = outbound_timeout(
                    self.config.shard_timeout_seconds,
                    reserve_seconds=self.config.merge_reserve_seconds,
                )
            except DeadlineExceeded:
                reason = "no_time_left"
                break
            replica = replicas[replica_index]
            started = time.perf_counter()
            try:
                result = await replica.search(
                    vector,
                    k,
                    embedding_version=query.embedding_version,
                    nprobe=query.nprobe,
                    ef_search=query.ef_search,
                    timeout=timeout,
                )
            except (Unavailable, DeadlineExceeded) as error:
                breaker.record_failure()
                reason = "timeout" if isinstance(error, DeadlineExceeded) else "unavailable"
                self._count_failure(shard_id, reason, replica.endpoint, error)
                continue
            except FailedPrecondition as error:
                # A version mismatch mid-rollout: not a health problem, but no answer either.
                reason = "precondition"
                self._count_failure(shard_id, reason, replica.endpoint, error)
                continue
            breaker.record_success()
            self.metrics.shard_searched(shard_id, time.perf_counter() - started)
            others_left = any(
                self.breakers[shard_id][other].state is not BreakerState.OPEN
                for other in order[position + 1 :]
            )
            if others_left and self._looks_wrong(result.hits[0], holds_items, description):
                # Only worth it with another replica to ask; each replica is asked once.
                self.metrics.sanity_retry(shard_id)
                logger.warning(
                    "shard replica answer failed the sanity check; asking another replica",
                    extra={"shard_id": shard_id, "endpoint": replica.endpoint},
                )
                if doubtful is None or _top(result) > _top(doubtful):
                    doubtful = result
                continue
            return result
        if doubtful is not None:
            return doubtful  # the best a replica could do; still better than nothing
        if reason == "breaker_open":
            self._count_failure(shard_id, reason, "all replicas", Unavailable("breakers open"))
        raise _ShardFailed(shard_id, reason)

    def _looks_wrong(
        self, hits: SearchHits, holds_items: bool, description: IndexDescription
    ) -> bool:
        if not hits.item_ids.size:
            return holds_items
        threshold = self.config.min_top_score
        # Raw inner products (ALS scores) have no fixed scale; a cosine under the threshold
        # (seed: 0.1) suggests a broken replica.
        return (
            threshold is not None
            and description.metric == "inner_product"
            and description.normalized
            and float(hits.scores[0]) < threshold
        )

    def _count_failure(self, shard_id: int, reason: str, endpoint: str, error: Exception) -> None:
        self.metrics.shard_failed(shard_id, reason)
        logger.warning(
            "shard replica failed",
            extra={
                "shard_id": shard_id,
                "endpoint": endpoint,
                "reason": reason,
                "error": str(error),
            },
        )

    async def close(self) -> None:
        for replicas in self.shards:
            for replica in replicas:
                await replica.close()


def _top(result: ShardSearchResult) -> float:
    scores = result.hits[0].scores
    return float(scores[0]) if scores.size else float("-inf")
