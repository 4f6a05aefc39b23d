"""What the Recommend pipeline needs to find and score candidates.

- `VectorSearch`: nearest items to a vector (the Retriever in process, or a RetrieveService
  client in the distributed layout).
- `CandidateSource`: one way of finding candidates for a request (personalised retrieval,
  popularity, popular in a category, similar to liked items...); the pipeline composes them.
- `Scorer`: ranks candidates for a user (the Rank service in process or over gRPC).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from recsys.domain.candidates import SourceColumn, SourceKind
from recsys.domain.recommend.values import CandidatePool
from recsys.domain.requests import RecommendQuery, RequestContext
from recsys.domain.retrieval import RetrievalQuery, RetrievalResult
from recsys.domain.scoring import ScoredCandidates
from recsys.ports.features import UserEmbedding
from recsys.ports.metadata import UserProfile


class VectorSearch(Protocol):
    async def retrieve(self, query: RetrievalQuery) -> RetrievalResult: ...


@dataclass(frozen=True)
class CandidateRequest:
    query: RecommendQuery
    # The user's embedding (or the default one); None when there is none to search with.
    embedding: UserEmbedding | None
    profile: UserProfile | None
    # The embedding version the index is expected to serve (item vectors' queries carry it).
    embedding_version: str = ""
    # The user's consumed and recent items (what the neighbour source starts from).
    history: frozenset[int] = frozenset()


class CandidateSource(Protocol):
    """Raises RecsysError when its dependency fails; the pipeline decides what that costs."""

    # The pipeline stage it runs as (metric label, log field).
    name: str

    async def candidates(self, request: CandidateRequest) -> CandidatePool: ...


class Scorer(Protocol):
    async def score(
        self,
        user_id: str,
        item_ids: npt.NDArray[np.int64],
        candidate_scores: npt.NDArray[np.float32],
        context: RequestContext,
        *,
        sources: Mapping[SourceKind, SourceColumn] | None = None,
        history_size: int | None = None,
    ) -> ScoredCandidates:
        """`sources`: what each candidate source said about the candidates (aligned with
        `item_ids`); `history_size`: the number of items in the user's history (None:
        unknown). Both are ranking features."""
        ...
