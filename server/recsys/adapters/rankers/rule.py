"""The rule-based ranker (no model): the seed's fallback formula as a backend of its own."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from recsys.domain.ranking import rule_scores
from recsys.ports.ranker import Ranker
from recsys.settings import RecsysSettings


class RuleRanker(Ranker):
    rule_based = True

    @classmethod
    def from_settings(cls, settings: RecsysSettings) -> RuleRanker:
        return cls()

    @property
    def model_version(self) -> str:
        return ""

    async def score(
        self, features: npt.NDArray[np.float32], *, timeout: float
    ) -> npt.NDArray[np.float32]:
        return rule_scores(features)
