"""The merge stage of the Recommend pipeline: retrieval's candidates with the item-to-item
neighbours' and popularity's, in one pool (`recsys.domain.candidates.merge_sources`), every
candidate carrying what each source said as ranking features.

The extra sources are read through the `Guard`, together: one that fails or runs out of time
is left out of the merge and named in the answer (`partial_candidates`), never an error.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from recsys.domain.candidates import MergedCandidates, SourceKind, SourceList, merge_sources
from recsys.domain.recommend.guard import Guard, Trace
from recsys.domain.recommend.values import CandidatePool, Reason
from recsys.errors import RecsysError, Unavailable
from recsys.ports.candidates import CandidateRequest, CandidateSource

logger = logging.getLogger(__name__)

# The reason a merged candidate is served with: its first source's (merge order).
REASONS: Mapping[SourceKind, Reason] = {
    SourceKind.RETRIEVAL: Reason.PERSONALIZED,
    SourceKind.NEIGHBOURS: Reason.SIMILAR_TO_LIKED,
    SourceKind.POPULARITY: Reason.TRENDING,
}


@dataclass(frozen=True)
class ExtraSource:
    """A source merged with retrieval, and the budget it is read within."""

    kind: SourceKind
    source: CandidateSource
    budget_seconds: float | None


@dataclass(frozen=True)
class MixedCandidates:
    # The merged candidates in merge order, scored by retrieval (0 where it did not find
    # them), each with its first source's reason.
    pool: CandidatePool
    # What every source said about each candidate (aligned with `pool`).
    merged: MergedCandidates


async def read_sources(
    guard: Guard, extras: Sequence[ExtraSource], request: CandidateRequest, trace: Trace
) -> dict[SourceKind, CandidatePool]:
    """The extra sources' answers, read concurrently; a source that fails or runs out of time
    is left out and recorded in `trace`."""

    async def read(extra: ExtraSource) -> CandidatePool | None:
        pool: CandidatePool | None = await guard.read(
            extra.source.name,
            functools.partial(_candidates, extra.source, request),
            fallback=None,
            trace=trace,
            budget_seconds=extra.budget_seconds,
            # Any refusal: an extra source is never worth failing the answer for.
            degrades=_always,
        )
        if pool is None:
            trace.candidate_source_failed(extra.kind.value)
        return pool

    pools = await asyncio.gather(*(read(extra) for extra in extras))
    return {extra.kind: pool for extra, pool in zip(extras, pools, strict=True) if pool is not None}


def mix(
    pools: Mapping[SourceKind, CandidatePool], *, excluded: Iterable[int], index_version: str
) -> MixedCandidates:
    """One pool from the sources' answers (merge order; `excluded` left out)."""
    lists = [SourceList.of(kind, pool.item_ids, pool.scores) for kind, pool in pools.items()]
    merged = merge_sources(lists, excluded=np.fromiter(excluded, dtype=np.int64))
    pool = CandidatePool(
        tuple(merged.item_ids.tolist()),
        tuple(merged.score_of(SourceKind.RETRIEVAL).tolist()),
        tuple(REASONS[source] for source in merged.first_sources),
        index_version,
    )
    return MixedCandidates(pool, merged)


async def _candidates(source: CandidateSource, request: CandidateRequest) -> CandidatePool:
    """The source's answer; a failure that is not a RecsysError (a bug in a store: an index
    out of range...) is logged and read as the source being unavailable, so it degrades the
    answer like any outage instead of failing it."""
    try:
        return await source.candidates(request)
    except RecsysError:
        raise
    except Exception as error:
        logger.exception("candidate source failed", extra={"source": source.name})
        raise Unavailable(f"candidate source {source.name} failed: {error!r}") from error


def _always(error: RecsysError) -> bool:
    return True
