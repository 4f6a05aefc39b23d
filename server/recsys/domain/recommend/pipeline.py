"""The Recommend pipeline's orchestrator (seed Journeys 1 and 2, Simulations 1, 2 and 6).

rate limit -> response cache -> profile, history, user features (timeout -> defaults) and
pre-computed results, read together -> a pre-computed answer re-checked (exclusions, privacy
filters, diversity; not re-ranked) or: cold start or retrieval (version mismatch or outage ->
popularity) merged with the neighbours of the user's history and popularity (`mixing`, when
configured) -> ranking (breaker -> fallbacks) -> selection (exclusions, privacy filters,
diversity) -> top N -> cache -> answer. `compute` is the same run without the rate limit and
either cache, for `recsys precompute`.

Every dependency read goes through the `Guard` (one budget and degradation policy); candidate
sources are `CandidateSource`s composed here; selection and cold-start scoring are pure
functions. Every degradation is flagged in the answer and counted; only bad input and the rate
limit are errors.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
from collections.abc import Sequence

import numpy as np

from recsys.domain.candidates import SourceKind, select_candidates
from recsys.domain.ranking import Backend
from recsys.domain.recommend.guard import Guard, Trace, is_outage
from recsys.domain.recommend.mixing import ExtraSource, MixedCandidates, mix, read_sources
from recsys.domain.recommend.observer import NullRecommendObserver, RecommendObserver
from recsys.domain.recommend.selection import cold_start_ranking, merge_pools, select
from recsys.domain.recommend.single_flight import SingleFlight
from recsys.domain.recommend.values import (
    MAX_LIMIT,
    CandidatePool,
    Degradation,
    Flag,
    Reason,
    Recommendation,
    RecommendConfig,
    RecommendedItem,
)
from recsys.domain.requests import RecommendQuery
from recsys.errors import (
    FailedPrecondition,
    RecsysError,
    ResourceExhausted,
    Unavailable,
)
from recsys.ports.cache import (
    PRECOMPUTED,
    RESPONSES,
    CachedItem,
    CachedRecommendations,
    RecommendationCache,
)
from recsys.ports.candidates import CandidateRequest, CandidateSource, Scorer
from recsys.ports.features import FeatureStore, UserEmbedding, UserFeatures
from recsys.ports.metadata import ItemMetadata, MetadataRepository, UserProfile
from recsys.ports.rate_limit import RateDecision, RateLimiter

# The response cache records the country an answer was filtered for.
COUNTRY = "country"


@dataclasses.dataclass(frozen=True)
class CandidateSources:
    """How the pipeline finds candidates, composed like `RankingChain` composes rankers."""

    # Personalised candidates for a user with an embedding.
    personalized: CandidateSource
    # When the personalised source fails, finds nothing, or everything is filtered out.
    fallback: CandidateSource
    # A user without an embedding or history: merged in order, first reason wins.
    cold_start: Sequence[CandidateSource]
    # Merged with the personalised candidates before ranking, each source's placement a
    # ranking feature (None: not configured; with neither, retrieval's candidates alone).
    # Neighbours of the user's history, within their own budget:
    neighbours: CandidateSource | None = None
    neighbours_timeout_seconds: float = 0.02
    # Popularity, within the metadata budget:
    popularity: CandidateSource | None = None

    @property
    def mixed(self) -> bool:
        return self.neighbours is not None or self.popularity is not None


class RecommendPipeline:
    def __init__(
        self,
        config: RecommendConfig,
        *,
        features: FeatureStore,
        metadata: MetadataRepository,
        cache: RecommendationCache,
        sources: CandidateSources,
        scorer: Scorer,
        limiter: RateLimiter | None = None,
        observer: RecommendObserver | None = None,
    ) -> None:
        self.config = config
        self.features = features
        self.metadata = metadata
        self.cache = cache
        self.sources = sources
        self.scorer = scorer
        self.limiter = limiter
        self.observer = observer or NullRecommendObserver()
        self.guard = Guard(self.observer, reserve_seconds=config.answer_reserve_seconds)
        self.flights: SingleFlight[Recommendation] = SingleFlight()
        self.default_embedding: UserEmbedding | None = None

    async def refresh_default_embedding(self) -> None:
        """The average user's embedding, for users whose own cannot be read."""
        self.default_embedding = await self.guard.read(
            "default_features",
            self.features.get_default_user_embedding,
            fallback=self.default_embedding,
            trace=Trace(),
            # At startup too: without it users without features get popularity answers.
            degrades=lambda error: True,
        )

    # ------------------------------------------------------------------ the pipeline

    async def recommend(self, query: RecommendQuery) -> Recommendation:
        started = time.perf_counter()
        try:
            # Every call counts against the rate limit, shared run or not.
            await self._rate_limit(query.user_id, Trace())
            answer = await self._shared(query)
        except BaseException:
            self.observer.failed(time.perf_counter() - started)
            raise
        # Caches keep up to MAX_LIMIT items; this request gets the `limit` it asked for.
        answer = dataclasses.replace(answer, items=answer.items[: query.limit])
        self.observer.answered(
            time.perf_counter() - started,
            cold_start=answer.cold_start,
            empty=not answer.items,
            degradations=answer.degradation.kinds(),
        )
        return answer

    async def _shared(self, query: RecommendQuery) -> Recommendation:
        """Concurrent identical requests (a burst of retries, a page rendering twice) share one
        run: the answer holds up to MAX_LIMIT items whatever `limit` the first one asked."""
        if query.excluded_item_ids or query.context.category is not None:
            return await self._recommend(query)
        context = query.context
        key = (query.user_id, query.surface, context.country, context.device_type, context.locale)
        answer, shared = await self.flights.run(key, functools.partial(self._recommend, query))
        if shared:
            self.observer.cache_hit("single_flight")
        return answer

    async def compute(self, query: RecommendQuery) -> Recommendation:
        """A fresh answer for an offline job (`recsys precompute`): no rate limit, the response
        cache neither read nor written, no pre-computed entry read; up to MAX_LIMIT items
        whatever `limit` asks. Degradations are flagged as for a request."""
        return await self._recommend(query, fresh=True)

    async def _recommend(self, query: RecommendQuery, *, fresh: bool = False) -> Recommendation:
        trace = Trace()
        cacheable = not fresh and query.context.category is None and not query.excluded_item_ids
        if cacheable:
            cached = await self._cached(RESPONSES, query, trace)
            # The regional filter depends on the request's country: an answer filtered for
            # another country is not this request's answer.
            if cached is not None and cached.extra.get(COUNTRY, "") == query.context.country:
                self.observer.cache_hit("response_cache")
                return _from_cache(cached, Degradation(served_from_cache=True))
        # A pre-computed list is the user's general one: a category request needs its own.
        precomputable = not fresh and query.context.category is None
        profile, consumed, user, precomputed, retrieved = await self._user_reads(
            query, trace, precomputed=precomputable
        )
        if profile is not None and profile.deleted:
            # An erased user: nothing personal remains; serve what anyone would see.
            profile, precomputed = None, None
        if user is not None:
            consumed = consumed | set(user.recent_item_ids)  # realtime: the last 30 minutes
        if precomputed is not None:
            stored, metadata = precomputed
            served = await self._from_precomputed(query, stored, metadata, profile, consumed, trace)
            if served is not None:
                self.observer.cache_hit("precomputed")
                return served
        if user is not None and user.embedding is None and not consumed:
            return await self._cold_start(query, profile, consumed, trace)
        embedding = user.embedding if user is not None else None
        if embedding is None and self.default_embedding is not None:
            embedding = self.default_embedding
            trace.raise_flag(Flag.DEFAULT_FEATURES)
        if retrieved is None:
            retrieved = await self._retrieve(query, embedding, trace)
        mixed = None
        if self.sources.mixed:
            mixed = await self._mixed(query, retrieved, profile, consumed, trace)
            pool = mixed.pool
        else:
            pool = await self._personalized_or_fallback(query, retrieved, profile, trace)
        answer = await self._rank_and_select(query, pool, profile, consumed, trace, mixed=mixed)
        # A degraded answer is not cached: the cache would serve it for minutes after the
        # dependency recovered, and without its flags.
        if cacheable and answer.items and not answer.degradation.kinds():
            await self._store(query, answer, trace)
        return answer

    async def _precomputed(
        self, query: RecommendQuery, trace: Trace
    ) -> tuple[CachedRecommendations, dict[int, ItemMetadata] | None] | None:
        """The pre-computed entry and its items' metadata, read while the profile and history
        are: a hit then costs one round of reads, not two."""
        stored = await self._cached(PRECOMPUTED, query, trace)
        if stored is None:
            return None
        if len(stored.items) < query.limit:
            return stored, None  # cannot serve this request whatever is excluded
        # Metadata for a prefix first (reading 100 items' rows costs ~4 ms of CPU, the most of
        # a hit): twice what the request and the diversity window need; the rest only if too
        # few of those survive. The live path reads again and flags what fails for itself.
        size = 2 * max(query.limit, self.config.diversity_window)
        item_ids = [item.item_id for item in stored.items[:size]]
        return stored, await self._item_metadata(item_ids, Trace())

    async def _from_precomputed(
        self,
        query: RecommendQuery,
        stored: CachedRecommendations,
        metadata: dict[int, ItemMetadata] | None,
        profile: UserProfile | None,
        consumed: set[int],
        trace: Trace,
    ) -> Recommendation | None:
        """The stored answer in its stored order and scores (not re-ranked: the seed's ~5 ms
        budget has no room for the ranker), re-checked for what may have changed since it was
        computed: exclusions (history, recent interactions, the request's), the privacy filters
        on the current profile and this request's country, then diversity. None when fewer
        items than the request's limit survive, or item metadata could not be read: the live
        path answers instead."""
        if metadata is None:
            return None
        excluded = frozenset(consumed | set(query.excluded_item_ids))
        kept = [item for item in stored.items if item.item_id not in excluded]
        pool = CandidatePool(
            tuple(item.item_id for item in kept),
            tuple(item.score for item in kept),
            tuple(Reason.parse(item.reason) for item in kept),
            stored.index_version,
        )
        # Items beyond the prefix read have no metadata yet: the filters drop them.
        items = select(
            pool,
            query=query,
            profile=profile,
            excluded=excluded,
            metadata=metadata,
            config=self.config,
        )
        unread = [item.item_id for item in kept if item.item_id not in metadata]
        if len(items) < query.limit and unread:
            rest = await self._item_metadata(unread, Trace())
            if rest is None:
                return None
            items = select(
                pool,
                query=query,
                profile=profile,
                excluded=excluded,
                metadata={**metadata, **rest},
                config=self.config,
            )
        if len(items) < query.limit:
            return None
        trace.raise_flag(Flag.SERVED_FROM_PRECOMPUTED)
        return Recommendation(
            items=items,
            model_version=stored.model_version,
            index_version=stored.index_version,
            cold_start=stored.cold_start,
            explanation=stored.explanation,
            ranking_backend=_backend(stored.ranking_backend),
            degradation=trace.degradation(),
        )

    # ------------------------------------------------------------------ stages

    async def _rate_limit(self, user_id: str, trace: Trace) -> None:
        limiter = self.limiter
        if limiter is None or not self.config.rate_limit_enabled:
            return
        decision: RateDecision | None = await self.guard.read(
            "rate_limit",
            functools.partial(limiter.hit, user_id),
            fallback=None,
            trace=trace,
            budget_seconds=self.config.rate_limit_timeout_seconds,
        )
        if decision is None:
            if not self.config.rate_limit_fail_open:
                raise Unavailable("the rate limiter cannot be reached", reason="RATE_LIMITER_DOWN")
            # The limiter's store is down: serve (fail open) rather than refuse everyone.
            self.observer.rate_limit_bypassed()
            return
        if not decision.allowed:
            self.observer.rate_limited()
            raise ResourceExhausted(
                f"user {user_id} exceeded {limiter.limit} requests per {limiter.window_seconds} s",
                retry_after_seconds=decision.retry_after_seconds,
                reason="RATE_LIMITED",
            )

    async def _cached(
        self, kind: str, query: RecommendQuery, trace: Trace
    ) -> CachedRecommendations | None:
        return await self.guard.read(
            f"cache_{kind}",
            functools.partial(self.cache.get, kind, query.user_id, query.surface),
            fallback=None,
            trace=trace,
            budget_seconds=self.config.cache_timeout_seconds,
        )

    async def _store(self, query: RecommendQuery, answer: Recommendation, trace: Trace) -> None:
        value = to_cached(answer, {COUNTRY: query.context.country})
        await self.guard.read(
            "cache_store",
            functools.partial(
                self.cache.put,
                RESPONSES,
                query.user_id,
                query.surface,
                value,
                self.config.cache_ttl_seconds,
            ),
            fallback=None,
            trace=trace,
            budget_seconds=self.config.cache_timeout_seconds,
        )

    async def _user_reads(
        self, query: RecommendQuery, trace: Trace, *, precomputed: bool
    ) -> tuple[
        UserProfile | None,
        set[int],
        UserFeatures | None,
        tuple[CachedRecommendations, dict[int, ItemMetadata] | None] | None,
        CandidatePool | None,
    ]:
        """Profile, history, user features and (when asked) the pre-computed entry with its
        items' metadata, read together, each apart, so a slow table costs only its own part;
        retrieval starts as soon as the user's embedding is read (`_features_and_candidates`)
        and runs beside the profile and history reads.
        Without the profile the filters treat the user as of unknown age (no adult items);
        without the history only the recent interactions of the feature store are excluded.
        Either is flagged."""
        budget = self.config.metadata_timeout_seconds
        no_history: set[int] = set()
        user_id = query.user_id
        reads = asyncio.gather(
            self.guard.read(
                "profile",
                functools.partial(self.metadata.get_user, user_id),
                fallback=None,
                trace=trace,
                budget_seconds=budget,
                flag=Flag.METADATA_UNAVAILABLE,
            ),
            self.guard.read(
                "history",
                functools.partial(self.metadata.consumed_item_ids, user_id),
                fallback=no_history,
                trace=trace,
                budget_seconds=budget,
                flag=Flag.METADATA_UNAVAILABLE,
            ),
            self._features_and_candidates(query, trace, precomputed=precomputed),
        )
        profile, consumed, (user, stored, retrieved) = await reads
        return profile, consumed, user, stored, retrieved

    async def _features_and_candidates(
        self, query: RecommendQuery, trace: Trace, *, precomputed: bool
    ) -> tuple[
        UserFeatures | None,
        tuple[CachedRecommendations, dict[int, ItemMetadata] | None] | None,
        CandidatePool | None,
    ]:
        """The user's features and the pre-computed entry; then, when the user has an
        embedding of their own and no pre-computed entry could answer, the personalised
        candidates at once, without waiting for the profile and history (retrieval does not
        read them). None for the candidates otherwise: cold start, the default embedding and a
        usable pre-computed entry are decided once every read is in."""
        if precomputed:
            user, stored = await asyncio.gather(
                self._user_features(query.user_id, trace), self._precomputed(query, trace)
            )
        else:
            user, stored = await self._user_features(query.user_id, trace), None
        if user is None or user.embedding is None:
            return user, stored, None
        if stored is not None and stored[1] is not None:
            return user, stored, None  # likely answered from the entry: no retrieval spent
        return user, stored, await self._retrieve(query, user.embedding, trace)

    async def _user_features(self, user_id: str, trace: Trace) -> UserFeatures | None:
        """The user's features, or None (and `default_features`, when a default embedding
        stands in) when the store is slow or down."""
        return await self.guard.read(
            "features",
            functools.partial(self.features.get_user_features, user_id),
            fallback=None,
            trace=trace,
            budget_seconds=self.config.feature_timeout_seconds,
            flag=Flag.DEFAULT_FEATURES if self.default_embedding is not None else None,
        )

    def _request(
        self,
        query: RecommendQuery,
        embedding: UserEmbedding | None,
        profile: UserProfile | None,
    ) -> CandidateRequest:
        version = embedding or self.default_embedding
        return CandidateRequest(
            query, embedding, profile, version.embedding_version if version else ""
        )

    async def _retrieve(
        self, query: RecommendQuery, embedding: UserEmbedding | None, trace: Trace
    ) -> CandidatePool:
        """Personalised candidates (empty when retrieval fails, seed Simulation 6: a stale
        embedding version). The source gets no profile: it runs before the profile is read."""
        if embedding is None:
            return CandidatePool()
        source = self.sources.personalized
        pool = await self.guard.read(
            source.name,
            functools.partial(source.candidates, self._request(query, embedding, None)),
            fallback=CandidatePool(),
            trace=trace,
            degrades=_retrieval_degrades,
        )
        if pool.failed_shard_ids:
            trace.raise_flag(Flag.PARTIAL_RETRIEVAL)
            trace.failed_shard_ids.update(pool.failed_shard_ids)
        return pool

    async def _personalized_or_fallback(
        self,
        query: RecommendQuery,
        pool: CandidatePool,
        profile: UserProfile | None,
        trace: Trace,
    ) -> CandidatePool:
        """The personalised candidates, or the fallback source's (flagged) when retrieval
        failed or found nothing."""
        if len(pool):
            return pool
        trace.raise_flag(Flag.POPULARITY_CANDIDATES)
        return await self._fallback_pool(self._request(query, None, profile), trace)

    async def _mixed(
        self,
        query: RecommendQuery,
        retrieved: CandidatePool,
        profile: UserProfile | None,
        consumed: set[int],
        trace: Trace,
    ) -> MixedCandidates:
        """Retrieval's candidates merged with the neighbours' of the user's history and
        popularity's, read together once the history is in; history and the request's
        exclusions left out. When retrieval found nothing, the fallback source's candidates
        (flagged, as without the merge) stand in for popularity's, and the neighbours' are
        still ranked."""
        sources = self.sources
        request = dataclasses.replace(
            self._request(query, None, profile), history=frozenset(consumed)
        )
        extras = []
        if sources.neighbours is not None:
            extras.append(
                ExtraSource(
                    SourceKind.NEIGHBOURS, sources.neighbours, sources.neighbours_timeout_seconds
                )
            )
        if len(retrieved):
            if sources.popularity is not None:
                extras.append(
                    ExtraSource(
                        SourceKind.POPULARITY,
                        sources.popularity,
                        self.config.metadata_timeout_seconds,
                    )
                )
            pools = await read_sources(self.guard, extras, request, trace)
        else:
            trace.raise_flag(Flag.POPULARITY_CANDIDATES)
            pools, fallback = await asyncio.gather(
                read_sources(self.guard, extras, request, trace),
                self._fallback_pool(request, trace),
            )
            pools[SourceKind.POPULARITY] = fallback
        return mix(
            {SourceKind.RETRIEVAL: retrieved, **pools},
            excluded=consumed | set(query.excluded_item_ids),
            index_version=retrieved.index_version,
        )

    async def _fallback_pool(self, request: CandidateRequest, trace: Trace) -> CandidatePool:
        source = self.sources.fallback
        return await self.guard.read(
            source.name,
            functools.partial(source.candidates, request),
            fallback=CandidatePool(),
            trace=trace,
            budget_seconds=self.config.metadata_timeout_seconds,
            flag=Flag.METADATA_UNAVAILABLE,
        )

    async def _cold_start(
        self,
        query: RecommendQuery,
        profile: UserProfile | None,
        consumed: set[int],
        trace: Trace,
    ) -> Recommendation:
        """Seed Simulation 2: onboarding categories, items similar to the liked ones, trending;
        scored by popularity and category match."""
        request = self._request(query, None, profile)
        pools = await asyncio.gather(
            *(
                self.guard.read(
                    source.name,
                    functools.partial(source.candidates, request),
                    fallback=CandidatePool(),
                    trace=trace,
                    # Popular items are metadata reads: without their budget a locked or
                    # stalled table would spend the caller's whole deadline here.
                    budget_seconds=self.config.metadata_timeout_seconds,
                    # A source lost: said so, or a cold start left empty looks whole.
                    flag=Flag.PARTIAL_CANDIDATES,
                )
                for source in self.sources.cold_start
            )
        )
        pool = merge_pools(list(pools))
        metadata = await self._item_metadata(list(pool.item_ids), trace) or {}
        wanted = set(profile.onboarding_categories) if profile else set()
        if query.context.category is not None:
            wanted = {query.context.category}
        items = select(
            cold_start_ranking(pool, metadata, wanted),
            query=query,
            profile=profile,
            excluded=frozenset(consumed | set(query.excluded_item_ids)),
            metadata=metadata,
            config=self.config,
        )
        return Recommendation(
            items=items,
            cold_start=True,
            explanation="Based on your preferences",
            ranking_backend=Backend.RULE_FALLBACK,
            degradation=trace.degradation(),
        )

    async def _item_metadata(
        self, item_ids: list[int], trace: Trace
    ) -> dict[int, ItemMetadata] | None:
        """The items' metadata, or None (flagged) when the store is slow or down."""
        if not item_ids:
            return {}
        return await self.guard.read(
            "item_metadata",
            functools.partial(self.metadata.get_items, item_ids),
            fallback=None,
            trace=trace,
            budget_seconds=self.config.metadata_timeout_seconds,
            flag=Flag.METADATA_UNAVAILABLE,
        )

    async def _rank_and_select(
        self,
        query: RecommendQuery,
        pool: CandidatePool,
        profile: UserProfile | None,
        consumed: set[int],
        trace: Trace,
        *,
        mixed: MixedCandidates | None = None,
    ) -> Recommendation:
        """`mixed`: what each source said about `pool`'s candidates (aligned with it), passed
        to the scorer as features with the size of the user's history."""
        excluded = frozenset(consumed | set(query.excluded_item_ids))
        keep = [position for position, item in enumerate(pool.item_ids) if item not in excluded]
        model_version, backend = "", None
        if keep:
            item_ids = np.array([pool.item_ids[i] for i in keep], dtype=np.int64)
            scores = np.array([pool.scores[i] for i in keep], dtype=np.float32)
            async with self.guard.timed("ranking"):
                if mixed is None:
                    scored = await self.scorer.score(query.user_id, item_ids, scores, query.context)
                else:
                    rows = np.array(keep, dtype=np.int64)
                    scored = await self.scorer.score(
                        query.user_id,
                        item_ids,
                        scores,
                        query.context,
                        sources=select_candidates(mixed.merged, rows).columns,
                        history_size=len(consumed),
                    )
            model_version, backend = scored.model_version, scored.backend
            if scored.backend is not Backend.MODEL:
                trace.raise_flag(Flag.FALLBACK_RANKING)
            if scored.default_features:
                trace.raise_flag(Flag.DEFAULT_FEATURES)
            reason_of = pool.reason_of()
            ranked_ids = scored.item_ids.tolist()
            pool = CandidatePool(
                tuple(ranked_ids),
                tuple(scored.scores.tolist()),
                tuple(reason_of[item] for item in ranked_ids),
                pool.index_version,
            )
        else:
            pool = CandidatePool(index_version=pool.index_version)
        items = await self._select_in_chunks(query, pool, profile, excluded, trace)
        if not items and Flag.POPULARITY_CANDIDATES not in trace.flags:
            # Empty after filtering: trending instead of nothing.
            trace.raise_flag(Flag.POPULARITY_CANDIDATES)
            trending = await self._fallback_pool(self._request(query, None, profile), trace)
            items = await self._select_in_chunks(query, trending, profile, excluded, trace)
            backend = Backend.RULE_FALLBACK
        popular = Flag.POPULARITY_CANDIDATES in trace.flags
        return Recommendation(
            items=items,
            model_version=model_version,
            index_version=pool.index_version,
            explanation="Popular right now" if popular else "Picked for you",
            ranking_backend=backend,
            degradation=trace.degradation(),
        )

    async def _select_in_chunks(
        self,
        query: RecommendQuery,
        pool: CandidatePool,
        profile: UserProfile | None,
        excluded: frozenset[int],
        trace: Trace,
    ) -> tuple[RecommendedItem, ...]:
        """Filters the ranked pool reading item metadata for a prefix only (300 first, then
        twice as many) until enough items survive for the cache, instead of all 1000. When a
        read fails, the answer stops at the items read before it: an item without metadata is
        never served (the filters fail closed), and lower-ranked items must not stand in
        silently for the ones that could not be checked."""
        size = min(len(pool), self.config.selection_prefix)
        metadata: dict[int, ItemMetadata] = {}
        items: tuple[RecommendedItem, ...] = ()
        fetched = 0
        while True:
            chunk = await self._item_metadata(list(pool.item_ids[fetched:size]), trace)
            if chunk is None:
                return items
            metadata.update(chunk)
            fetched = size
            prefix = CandidatePool(pool.item_ids[:size], pool.scores[:size], pool.reasons[:size])
            items = select(
                prefix,
                query=query,
                profile=profile,
                excluded=excluded,
                metadata=metadata,
                config=self.config,
            )
            if len(items) >= MAX_LIMIT or size >= len(pool):
                return items
            size = min(len(pool), size * 2)


def to_cached(answer: Recommendation, extra: dict[str, str]) -> CachedRecommendations:
    """An answer as the caches hold it (the response cache, `recsys precompute`)."""
    return CachedRecommendations(
        items=tuple(
            CachedItem(item.item_id, item.score, item.category, item.reason.value,
                       item.reason_text)
            for item in answer.items
        ),
        model_version=answer.model_version,
        index_version=answer.index_version,
        cold_start=answer.cold_start,
        explanation=answer.explanation,
        ranking_backend=answer.ranking_backend.value if answer.ranking_backend else "",
        extra=extra,
    )  # fmt: skip


def _from_cache(cached: CachedRecommendations, degradation: Degradation) -> Recommendation:
    return Recommendation(
        items=tuple(
            RecommendedItem(item.item_id, item.score, item.category, Reason.parse(item.reason))
            for item in cached.items
        ),
        model_version=cached.model_version,
        index_version=cached.index_version,
        cold_start=cached.cold_start,
        explanation=cached.explanation,
        ranking_backend=_backend(cached.ranking_backend),
        degradation=degradation,
    )


def _retrieval_degrades(error: RecsysError) -> bool:
    """Seed Simulation 6: a user embedding of another version than the index is expected during
    a model rollout, and answered with popularity; any other refusal is a bug."""
    return is_outage(error) or (
        isinstance(error, FailedPrecondition) and error.reason == "EMBEDDING_VERSION_MISMATCH"
    )


def _backend(value: str) -> Backend | None:
    try:
        return Backend(value)
    except ValueError:
        return None
