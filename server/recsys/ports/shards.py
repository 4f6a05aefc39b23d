"""Index shards as the Retrieve service sees them: search and describe one shard replica."""

from __future__ import annotations

import abc
import datetime as dt
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

# The most hits one query may ask a shard (and Retrieve) for.
MAX_K = 2000


@dataclass(frozen=True, slots=True)
class SearchHits:
    """The hits of one query in rank order; shorter than k when the shard holds fewer items."""

    item_ids: npt.NDArray[np.int64]
    scores: npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class ShardDescription:
    shard_id: int
    num_shards: int
    item_count: int
    dimension: int
    index_type: str
    metric: str
    index_version: str
    embedding_version: str
    built_at: dt.datetime | None
    on_gpu: bool
    # Vectors and queries L2-normalised: inner-product scores are cosines in [-1, 1].
    normalized: bool = False


@dataclass(frozen=True, slots=True)
class ShardSearchResult:
    shard_id: int
    index_version: str
    hits: list[SearchHits]


class ShardClient(abc.ABC):
    """One replica of one shard. Failures raise RecsysError: Unavailable or DeadlineExceeded for
    a replica that cannot answer (the caller tries another), FailedPrecondition for a version
    mismatch, InvalidArgument for a bad request."""

    #: Where the replica is, for logs and metrics (e.g. "127.0.0.1:50103" or "local").
    endpoint: str

    @abc.abstractmethod
    async def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        embedding_version: str,
        nprobe: int | None,
        ef_search: int | None,
        timeout: float,
    ) -> ShardSearchResult: ...

    @abc.abstractmethod
    async def describe(self, *, timeout: float) -> ShardDescription: ...

    async def close(self) -> None:
        return None
