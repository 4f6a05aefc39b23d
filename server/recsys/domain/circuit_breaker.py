"""A circuit breaker with the seed's semantics.

CLOSED: calls pass; `failure_threshold` consecutive failures (timeouts included) open it.
OPEN: calls are refused (the caller falls back at once) for `open_seconds`.
HALF_OPEN: about `half_open_fraction` of calls probe the dependency; `success_threshold`
consecutive successful probes close it, any failed probe opens it again.
Business errors (bad input) must not be recorded as failures: they say nothing about health.
"""

from __future__ import annotations

import enum
import logging
import random
import threading
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


TransitionListener = Callable[[str, BreakerState, BreakerState], None]


class CircuitBreaker:
    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int = 5,
        open_seconds: float = 5.0,
        half_open_fraction: float = 0.1,
        success_threshold: int = 3,
        clock: Callable[[], float] = time.monotonic,
        chance: Callable[[], float] = random.random,
        on_transition: TransitionListener | None = None,
    ) -> None:
        if failure_threshold < 1 or success_threshold < 1:
            raise ValueError("thresholds must be at least 1")
        if not 0 < half_open_fraction <= 1:
            raise ValueError("half_open_fraction must be in (0, 1]")
        self.name = name
        self.failure_threshold = failure_threshold
        self.open_seconds = open_seconds
        self.half_open_fraction = half_open_fraction
        self.success_threshold = success_threshold
        self._clock = clock
        self._chance = chance
        self._on_transition = on_transition
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._consecutive_failures = 0
        self._consecutive_successes = 0
        self._opened_at = 0.0

    @property
    def state(self) -> BreakerState:
        with self._lock:
            self._advance()
            return self._state

    def allow(self) -> bool:
        """Whether a call may go to the dependency now."""
        with self._lock:
            self._advance()
            if self._state is BreakerState.CLOSED:
                return True
            if self._state is BreakerState.OPEN:
                return False
            return self._chance() < self.half_open_fraction

    def record_success(self) -> None:
        with self._lock:
            self._consecutive_failures = 0
            if self._state is BreakerState.HALF_OPEN:
                self._consecutive_successes += 1
                if self._consecutive_successes >= self.success_threshold:
                    self._move(BreakerState.CLOSED)

    def record_failure(self) -> None:
        with self._lock:
            self._consecutive_successes = 0
            if self._state is BreakerState.HALF_OPEN:
                self._open()
                return
            self._consecutive_failures += 1
            if (
                self._state is BreakerState.CLOSED
                and self._consecutive_failures >= self.failure_threshold
            ):
                self._open()

    def _open(self) -> None:
        self._opened_at = self._clock()
        self._move(BreakerState.OPEN)

    def _advance(self) -> None:
        if (
            self._state is BreakerState.OPEN
            and self._clock() - self._opened_at >= self.open_seconds
        ):
            self._move(BreakerState.HALF_OPEN)

    def _move(self, state: BreakerState) -> None:
        previous, self._state = self._state, state
        self._consecutive_failures = 0
        self._consecutive_successes = 0
        logger.warning(
            "circuit breaker %s: %s -> %s",
            self.name,
            previous.value,
            state.value,
            extra={"breaker": self.name, "from_state": previous.value, "to_state": state.value},
        )
        if self._on_transition is not None:
            self._on_transition(self.name, previous, state)
