"""Dependency-aware health: each process checks, in the background, the dependencies it uses.

Probes are registered once per process by what builds the adapter or the service (the shared
adapters in `recsys.composition`, the services in their `build`): a probe is a cheap read that
raises when the dependency cannot answer. Every `interval_seconds` the monitor runs them all at
once, each within `timeout_seconds`; a dependency goes down after `failures_before_down`
failed checks in a row and comes back at its first success. Each change reaches the listeners:
the gRPC health names `dependency.<name>` (`GrpcApplication`), the gauge
`recsys_dependency_up{dependency}` (`DependencyMetrics`), and a log line here (WARNING with
the last error when it goes down, INFO when it recovers).

None of this changes liveness, and readiness only for a dependency registered with `gates`:
a process answers degraded when a dependency is down, by design, except
where it has nothing to answer without it (the ingest and consume processes and their broker:
the seed's describeCluster check). A new dependency is one `register` call beside the adapter,
with a probe that reads something cheap.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

logger = logging.getLogger(__name__)

#: Raises (anything) when the dependency cannot answer; returns (anything) when it can.
Probe = Callable[[], Awaitable[object]]


@dataclass(frozen=True, slots=True)
class DependencyState:
    name: str
    up: bool
    # The last failure, kept after a recovery ("" if the dependency never failed).
    last_error: str = ""
    consecutive_failures: int = 0
    changed_at: float = 0.0


#: Told every change of a dependency's `up` (and its first state).
DependencyListener = Callable[[DependencyState], Awaitable[None]]


class DependencyMonitor:
    def __init__(
        self,
        *,
        interval_seconds: float = 5.0,
        timeout_seconds: float = 1.0,
        failures_before_down: int = 2,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.interval_seconds = interval_seconds
        self.timeout_seconds = timeout_seconds
        self.failures_before_down = failures_before_down
        self._clock = clock
        self._probes: dict[str, Probe] = {}
        # Dependency -> the service names it gates; _process_gates: those gating everything.
        self.readiness_gates: dict[str, tuple[str, ...]] = {}
        self._process_gates: set[str] = set()
        self._states: dict[str, DependencyState] = {}
        self._listeners: list[DependencyListener] = []

    @property
    def names(self) -> list[str]:
        return list(self._probes)

    @property
    def states(self) -> dict[str, DependencyState]:
        """The last known state of each dependency checked at least once."""
        return dict(self._states)

    def register(self, name: str, probe: Probe, *, gates: tuple[str, ...] | None = None) -> None:
        """Adds a dependency; a second registration of a name keeps the first probe (shared
        adapters) but may add what it gates. `gates`: None, readiness does not follow it; the
        gRPC service names it gates (NOT_SERVING while it is down), or () for the whole process
        (a process with nothing to do without it)."""
        self._probes.setdefault(name, probe)
        if gates is None:
            return
        known = self.readiness_gates.get(name, ())
        self.readiness_gates[name] = tuple(dict.fromkeys((*known, *gates)))
        if not gates:
            self._process_gates.add(name)

    def gated_state(self) -> tuple[bool, set[str]]:
        """(whether no dependency gating the whole process is down, the service names gated
        by one that is down). A dependency not checked yet counts as down."""

        def down(name: str) -> bool:
            state = self._states.get(name)
            return state is None or not state.up

        process_up = not any(down(name) for name in self._process_gates)
        services_down = {
            service
            for name, services in self.readiness_gates.items()
            if down(name)
            for service in services
        }
        return process_up, services_down

    def add_listener(self, listener: DependencyListener) -> None:
        self._listeners.append(listener)

    async def run(self) -> None:
        """Checks every dependency now, then every `interval_seconds`, until cancelled."""
        while True:
            await self.check_all()
            await asyncio.sleep(self.interval_seconds)

    async def check_all(self) -> None:
        names = list(self._probes)
        errors = await asyncio.gather(*(self._check(self._probes[name]) for name in names))
        for name, error in zip(names, errors, strict=True):
            await self._record(name, error)

    async def _check(self, probe: Probe) -> str | None:
        try:
            async with asyncio.timeout(self.timeout_seconds):
                await probe()
        except TimeoutError:
            return f"no answer within {self.timeout_seconds:g} s"
        except Exception as error:  # any failure of a probe means "down"
            return f"{type(error).__name__}: {error}"
        return None

    async def _record(self, name: str, error: str | None) -> None:
        previous = self._states.get(name)
        if error is None:
            failures = 0
            up = True
            last_error = previous.last_error if previous is not None else ""
        else:
            failures = (previous.consecutive_failures if previous is not None else 0) + 1
            # Down at once when never seen up; otherwise after enough failures in a row.
            up = previous is not None and previous.up and failures < self.failures_before_down
            last_error = error
        changed = previous is None or previous.up != up
        state = DependencyState(
            name,
            up,
            last_error=last_error,
            consecutive_failures=failures,
            changed_at=self._clock() if previous is None or changed else previous.changed_at,
        )
        self._states[name] = state
        if not changed:
            return
        if not up:
            logger.warning(
                "dependency down; answers are degraded",
                extra={"dependency": name, "error": last_error, "failures": failures},
            )
        elif previous is not None:
            logger.info("dependency recovered", extra={"dependency": name})
        for listener in self._listeners:
            await listener(state)
