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
    #: False for a model behind a server: only then does an in-process CPU fallback help.
    in_process: bool = True

    @property
    @abc.abstractmethod
    def model_version(self) -> str: ...

    @abc.abstractmethod
    async def score(
        self, features: npt.NDArray[np.float32], *, timeout: float
    ) -> npt.NDArray[np.float32]: ...

    async def start(self) -> None:
        """Once the server listens: connect and check the model (FailedPrecondition when it is
        refused, Unavailable when it cannot be reached)."""
        return None

    async def ping(self, *, timeout: float) -> None:
        """A cheap call to the model server (the health probe); Unavailable when it cannot
        be reached. A model in process has nothing to reach."""
        return None

    async def watch(self, poll_seconds: float) -> None:
        """Runs until cancelled, swapping in newer model versions; returns at once when the
        backend has nothing to watch."""
        return None

    async def close(self) -> None:
        return None
