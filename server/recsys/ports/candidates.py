"""What the Recommend pipeline needs of retrieval and ranking; in-process objects (embedded) or
gRPC clients of RetrieveService and RankService (distributed) provide them."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import numpy.typing as npt

from recsys.domain.requests import RequestContext
from recsys.domain.retrieval import RetrievalQuery, RetrievalResult
from recsys.domain.scoring import ScoredCandidates


class CandidateSource(Protocol):
    async def retrieve(self, query: RetrievalQuery) -> RetrievalResult: ...


class Scorer(Protocol):
    async def score(
        self,
        user_id: str,
        item_ids: npt.NDArray[np.int64],
        candidate_scores: npt.NDArray[np.float32],
        context: RequestContext,
    ) -> ScoredCandidates: ...
