"""Ranker: a model backend that scores a feature matrix."""

from __future__ import annotations

import abc

import numpy as np
import numpy.typing as npt


class Ranker(abc.ABC):
    """Scores n x F features (columns as in `recsys.domain.ranking.RANKING_FEATURES`).

    Raises Unavailable or DeadlineExceeded when the backend cannot answer (these open the
    circuit breaker), InvalidArgument or FailedPrecondition when it refuses the inputs."""

    #: True for the rule formula, so responses say RULE_FALLBACK rather than MODEL.
    rule_based: bool = False

    @property
    @abc.abstractmethod
    def model_version(self) -> str: ...

    @abc.abstractmethod
    async def score(
        self, features: npt.NDArray[np.float32], *, timeout: float
    ) -> npt.NDArray[np.float32]: ...

    async def close(self) -> None:
        return None
