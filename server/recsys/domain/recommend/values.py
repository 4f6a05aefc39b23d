"""The Recommend pipeline's values: reasons, degradation flags, candidate pools, the answer and
the pipeline's configuration. All frozen; stages return new values instead of mutating."""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields

from recsys.domain.ranking import Backend

# The most a request can ask for (`limit`), and so what the caches hold.
MAX_LIMIT = 100


class Reason(enum.Enum):
    """Why an item is recommended: the candidate source it came from."""

    PERSONALIZED = "personalized"
    SIMILAR_TO_LIKED = "similar_to_liked"
    POPULAR_IN_CATEGORY = "popular_in_category"
    TRENDING = "trending"

    @classmethod
    def parse(cls, value: str) -> Reason:
        """A stored reason; an empty or unknown one (an older writer) reads as personalised."""
        try:
            return cls(value)
        except ValueError:
            return cls.PERSONALIZED

    def text(self, category: str) -> str:
        if self is Reason.POPULAR_IN_CATEGORY:
            return f"Popular in {category}"
        return _REASON_TEXTS[self]


_REASON_TEXTS = {
    Reason.PERSONALIZED: "Matches your taste",
    Reason.SIMILAR_TO_LIKED: "Similar to items you liked",
    Reason.TRENDING: "Trending now",
}


class Flag(enum.Enum):
    """What shaped an answer; each is a field of `Degradation`."""

    SERVED_FROM_CACHE = "served_from_cache"
    SERVED_FROM_PRECOMPUTED = "served_from_precomputed"
    FALLBACK_RANKING = "fallback_ranking"
    PARTIAL_RETRIEVAL = "partial_retrieval"
    DEFAULT_FEATURES = "default_features"
    POPULARITY_CANDIDATES = "popularity_candidates"
    METADATA_UNAVAILABLE = "metadata_unavailable"
    PARTIAL_CANDIDATES = "partial_candidates"


# Flags that mean a dependency failed (counted, and such answers are not cached); the other two
# say where a healthy answer came from.
DEGRADATIONS = (
    Flag.FALLBACK_RANKING,
    Flag.PARTIAL_RETRIEVAL,
    Flag.DEFAULT_FEATURES,
    Flag.POPULARITY_CANDIDATES,
    Flag.METADATA_UNAVAILABLE,
    Flag.PARTIAL_CANDIDATES,
)


@dataclass(frozen=True)
class Degradation:
    served_from_cache: bool = False
    served_from_precomputed: bool = False
    fallback_ranking: bool = False
    partial_retrieval: bool = False
    failed_shard_ids: tuple[int, ...] = ()
    default_features: bool = False
    popularity_candidates: bool = False
    metadata_unavailable: bool = False
    # A candidate source failed or timed out; the candidates come from the others.
    partial_candidates: bool = False
    # The sources that failed (`SourceKind` values), each once, in sorted order.
    failed_candidate_sources: tuple[str, ...] = ()

    @classmethod
    def of(
        cls,
        flags: Iterable[Flag],
        failed_shard_ids: Iterable[int] = (),
        failed_candidate_sources: Iterable[str] = (),
    ) -> Degradation:
        raised = {flag.value: True for flag in flags}
        return cls(
            **raised,
            failed_shard_ids=tuple(sorted(set(failed_shard_ids))),
            failed_candidate_sources=tuple(sorted(set(failed_candidate_sources))),
        )

    def kinds(self) -> list[str]:
        """The degradations that apply, by name (metric labels)."""
        return [flag.value for flag in DEGRADATIONS if getattr(self, flag.value)]

    def flags(self) -> list[Flag]:
        names = {field.name for field in fields(self)}
        return [flag for flag in Flag if flag.value in names and getattr(self, flag.value)]


@dataclass(frozen=True)
class RecommendedItem:
    item_id: int
    score: float
    category: str
    reason: Reason

    @property
    def reason_text(self) -> str:
        return self.reason.text(self.category)


@dataclass(frozen=True)
class Recommendation:
    items: tuple[RecommendedItem, ...]
    model_version: str = ""
    index_version: str = ""
    cold_start: bool = False
    explanation: str = ""
    # None when no ranking ran (nothing to rank).
    ranking_backend: Backend | None = None
    degradation: Degradation = Degradation()


@dataclass(frozen=True)
class CandidatePool:
    """Candidates in rank order with their scores and the reason each was found."""

    item_ids: tuple[int, ...] = ()
    scores: tuple[float, ...] = ()
    reasons: tuple[Reason, ...] = ()
    index_version: str = ""
    # Retrieval answered without these shards (the pool is partial).
    failed_shard_ids: tuple[int, ...] = ()

    @classmethod
    def ranked(
        cls,
        item_ids: Iterable[int],
        reason: Reason,
        *,
        scores: Iterable[float] | None = None,
        index_version: str = "",
        failed_shard_ids: tuple[int, ...] = (),
    ) -> CandidatePool:
        """A pool of one reason; without scores, descending from 1 in the given order."""
        ids = tuple(item_ids)
        if scores is None:
            count = max(1, len(ids))
            values = tuple(1.0 - position / count for position in range(len(ids)))
        else:
            values = tuple(scores)
        return cls(ids, values, (reason,) * len(ids), index_version, failed_shard_ids)

    def __len__(self) -> int:
        return len(self.item_ids)

    def reason_of(self) -> Mapping[int, Reason]:
        return dict(zip(self.item_ids, self.reasons, strict=True))


@dataclass(frozen=True)
class RecommendConfig:
    """What the pipeline needs of the settings (mapped in the servicer; no pydantic here)."""

    candidates: int = 1000
    cache_ttl_seconds: int = 300
    cache_timeout_seconds: float = 0.01
    feature_timeout_seconds: float = 0.01
    metadata_timeout_seconds: float = 0.05
    cold_start_candidates_per_source: int = 50
    cold_start_similar_per_liked_item: int = 25
    diversity_enabled: bool = True
    diversity_max_per_category: int = 3
    diversity_window: int = 20
    rate_limit_enabled: bool = True
    rate_limit_timeout_seconds: float = 0.1
    rate_limit_fail_open: bool = True
    # The country the regional availability filter assumes when neither the request nor the
    # profile names one ("": none, so region-limited items are left out).
    default_country: str = ""
    # Filtering reads item metadata for a prefix of the ranked pool first, then twice as much.
    selection_prefix: int = 300
    # Kept back from the request's deadline so a degraded answer still goes out in time.
    answer_reserve_seconds: float = 0.005
