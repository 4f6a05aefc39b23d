"""Drills on the serving processes: a shard, Retrieve, Rank and the model server die; two
Recommend replicas restart one at a time; the layout is offered twice its capacity."""

from __future__ import annotations

import math
import signal
import threading
import time
from typing import Any

from drills.core import STEADY_RATE, Observed, timed, under_load
from drills.load import REFUSALS
from drills.platform import Platform, say
from drills.report import DrillResult

SHARD = 3
# recsys up's first restart back-off after a child dies.
RESTART_BACKOFF_S = 1.0


def _watch_ready(
    platform: Platform, name: str, old_pid: int, marks: dict[str, float], origin: float
) -> threading.Thread:
    """Records in `marks["ready"]` the seconds from `origin` until the restarted child's
    readiness says SERVING again."""

    def watch() -> None:
        from drills.platform import _health

        try:
            platform.wait_child(name, other_than=old_pid, timeout=60)
            port = {"retrieve": platform.retrieve_address, "rank": platform.rank_address}.get(
                name, f"127.0.0.1:{platform.base_port + SHARD}"
            )
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if _health(port, "readiness", 0.5):
                    marks["ready"] = time.monotonic() - origin
                    return
                time.sleep(0.1)
        except RuntimeError:
            return

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def _no_errors(result: DrillResult, observed: Observed) -> bool:
    errors = observed.result.error_count
    detail = dict(observed.result.errors) or "none"
    return result.check(f"client errors: {errors} ({detail}); aim 0", errors == 0)


def kill_shard(platform: Platform) -> DrillResult:
    def run(result: DrillResult) -> None:
        marks: dict[str, float] = {}
        threads: list[threading.Thread] = []

        def fault() -> None:
            origin = time.monotonic()
            pid = platform.kill_child(f"shard-{SHARD}")
            threads.append(_watch_ready(platform, f"shard-{SHARD}", pid, marks, origin))

        observed = under_load(platform, before_s=8, fault=fault, after_s=37)
        for thread in threads:
            thread.join(5)
        observed.fill(result, f"shard:{SHARD}")
        _no_errors(result, observed)
        named = observed.count(f"shard:{SHARD}")
        partial = observed.count("partial_retrieval")
        result.check(
            f"answers flagged partial_retrieval naming shard {SHARD}: {named} "
            f"(partial_retrieval on {partial}); aim > 0, every partial one naming it",
            named > 0 and partial == named,
        )
        retrieve = platform.recsys_settings().retrieve
        breaker = retrieve.breaker_open_seconds
        # Half-open, a share of the calls probe the shard and it closes after a run of
        # successes: at the steady rate that takes about this long on average.
        probing = retrieve.breaker_success_threshold / (
            retrieve.breaker_half_open_fraction * STEADY_RATE
        )
        ready = marks.get("ready")
        result.notes.append(
            f"the shard was SERVING again {ready:.1f} s after the kill (supervisor back-off "
            f"{RESTART_BACKOFF_S:.0f} s + start)"
            if ready is not None
            else "the shard never came back"
        )
        recover = observed.recover(f"shard:{SHARD}", since=observed.fault_at)
        bound = (ready or math.inf) + breaker + probing + 1.0  # + the timeline's resolution
        result.check(
            f"whole again {'never' if recover is None else f'{recover:.1f} s'} after the kill; "
            f"aim within restart {ready if ready is None else round(ready, 1)} s + breaker open "
            f"{breaker:.0f} s + half-open closing {probing:.2f} s "
            f"({retrieve.breaker_success_threshold} successes at "
            f"{retrieve.breaker_half_open_fraction:.0%} of {STEADY_RATE:.0f} req/s) + 1 s "
            "resolution",
            recover is not None and recover <= bound,
        )

    return timed(
        f"SIGKILL shard {SHARD}",
        "0 client errors; partial results flagged naming the shard; whole again within the "
        "supervisor's restart + the breaker's time (open, then half-open until it closes)",
        run,
    )


def _kill_service(platform: Platform, name: str, flag: str, criterion: str) -> DrillResult:
    def run(result: DrillResult) -> None:
        marks: dict[str, float] = {}
        threads: list[threading.Thread] = []

        def fault() -> None:
            origin = time.monotonic()
            pid = platform.kill_child(name)
            threads.append(_watch_ready(platform, name, pid, marks, origin))

        observed = under_load(platform, before_s=8, fault=fault, after_s=32)
        for thread in threads:
            thread.join(5)
        observed.fill(result, flag)
        _no_errors(result, observed)
        flagged = observed.count(flag)
        result.check(f"answers flagged {flag}: {flagged}; aim > 0", flagged > 0)
        ready = marks.get("ready")
        if ready is not None:
            result.notes.append(f"{name} was SERVING again {ready:.1f} s after the kill")
        recover = observed.recover(flag, since=observed.fault_at)
        again = "never" if recover is None else f"{recover:.1f} s"
        result.check(
            f"model-ranked, whole answers again {again} after the kill; aim within the drill",
            recover is not None,
        )

    return timed(f"SIGKILL {name}", criterion, run)


def kill_retrieve(platform: Platform) -> DrillResult:
    return _kill_service(
        platform, "retrieve", "popularity_candidates",
        "0 client errors; answers flagged popularity_candidates until Retrieve is back",
    )  # fmt: skip


def kill_rank(platform: Platform) -> DrillResult:
    return _kill_service(
        platform, "rank", "fallback_ranking",
        "0 client errors; answers flagged fallback_ranking until Rank is back",
    )  # fmt: skip


def stop_model_server(platform: Platform) -> DrillResult:
    def run(result: DrillResult) -> None:
        settings = platform.recsys_settings().rank
        assert platform.mlserver is not None
        samples: list[tuple[float, float | None]] = []
        stop = threading.Event()
        origin = time.monotonic()

        def sample_breaker() -> None:
            while not stop.is_set():
                state = platform.metric(
                    "rank", "recsys_circuit_breaker_state", {"breaker": "ranking-model"}
                )
                samples.append((time.monotonic() - origin, state))
                stop.wait(0.5)

        def transitions(to_state: str) -> float:
            return platform.metric(
                "rank", "recsys_circuit_breaker_transitions_total",
                {"breaker": "ranking-model", "to_state": to_state},
            ) or 0.0  # fmt: skip

        opened_before, half_open_before = transitions("open"), transitions("half_open")
        sampler = threading.Thread(target=sample_breaker, daemon=True)
        sampler.start()
        marks: dict[str, float] = {}

        def fault() -> None:
            marks["fault"] = time.monotonic() - origin
            assert platform.mlserver is not None
            platform.mlserver.stop(kill=True)

        def repair() -> None:
            marks["repair"] = time.monotonic() - origin
            assert platform.mlserver is not None
            platform.mlserver.start(timeout=120)
            marks["restarted"] = time.monotonic() - origin

        hold = 20.0
        after = settings.breaker_open_seconds + 20.0
        observed = under_load(
            platform, before_s=8, fault=fault, hold_s=hold, repair=repair, after_s=after
        )
        stop.set()
        sampler.join(5)
        observed.fill(result, "ranking:CPU_MODEL")
        _no_errors(result, observed)
        opened = [at for at, state in samples if state == 2 and at >= marks["fault"]]
        opened_count = transitions("open") - opened_before
        result.check(
            f"the model breaker opened {opened[0] - marks['fault']:.1f} s after the stop "
            f"(rank.breaker_failure_threshold = {settings.breaker_failure_threshold} consecutive "
            f"failures); {opened_count:.0f} open transition(s) in the drill"
            if opened
            else "the model breaker never opened",
            bool(opened) and opened_count >= 1,
        )
        cpu = observed.count("ranking:CPU_MODEL")
        result.check(f"answers ranked by the CPU fallback and flagged: {cpu}; aim > 0", cpu > 0)
        closed = [
            at for at, state in samples
            if state == 0 and at >= marks.get("restarted", math.inf)
        ]  # fmt: skip
        half_open = transitions("half_open") - half_open_before
        result.check(
            f"closed again through half-open ({half_open:.0f} half-open transition(s) in the "
            "drill) "
            f"{closed[0] - marks['restarted']:.1f} s after MLServer was back"
            if closed
            else "the breaker did not close again within the drill",
            bool(closed) and half_open > 0,
        )
        result.notes.append(
            f"MLServer stopped {hold:.0f} s; its restart took "
            f"{marks.get('restarted', math.nan) - marks.get('repair', math.nan):.1f} s; breaker "
            f"open time {settings.breaker_open_seconds:.0f} s"
        )

    return timed(
        "model server stopped",
        "breaker opens after 5 failures; CPU fallback flagged; half-open recovery after the "
        "restart; 0 client errors",
        run,
    )


def rolling_restart(platform: Platform) -> DrillResult:
    def run(result: DrillResult) -> None:
        assert platform.supervisor is not None
        before = {
            name: pid for name, pid in platform.child_pids().items() if name.startswith("recommend")
        }
        marks: dict[str, float] = {}

        def fault() -> None:
            assert platform.supervisor is not None
            platform.supervisor.send_signal(signal.SIGHUP)
            started = time.monotonic()

            def replaced() -> bool:
                now = {
                    name: pid
                    for name, pid in platform.child_pids().items()
                    if name.startswith("recommend")
                }
                return len(now) == len(before) and not set(now.values()) & set(before.values())

            waited = platform.wait_for(replaced, timeout=90, poll=0.5)
            marks["replaced"] = waited if waited is not None else math.nan
            ready = platform.wait_for(lambda: _every_replica_ready(platform), timeout=90)
            marks["ready"] = time.monotonic() - started if ready is not None else math.nan

        # The load runs 40 s past the SIGHUP; both replicas must be new and ready 5 s before
        # it ends, so the whole restart happens under load.
        after = 40.0
        observed = under_load(platform, before_s=5, fault=fault, after_s=after, retry=True)
        observed.fill(result, None)
        _no_errors(result, observed)
        result.check(
            f"both replicas replaced by new processes in {marks['replaced']:.1f} s, both ready "
            f"(recsys_server_ready) {marks['ready']:.1f} s after the SIGHUP, all under load",
            not math.isnan(marks["replaced"]) and marks["ready"] < after - 5,
        )
        result.notes.append(
            "the load uses the client library with its default retries (UNAVAILABLE, "
            "back-off), as an application would"
        )

    return timed(
        "rolling SIGTERM restart of 2 recommend replicas",
        "0 failed calls for the client library",
        run,
    )


def _every_replica_ready(platform: Platform) -> bool:
    names = [name for name in platform.child_pids() if name.startswith("recommend")]
    return len(names) == 2 and all(
        platform.metric(name, "recsys_server_ready") == 1.0 for name in names
    )


def _step(platform: Platform, rate: float, seconds: float, first_user: int) -> dict[str, Any]:
    observed = under_load(
        platform, before_s=seconds, fault=lambda: None, after_s=0.0, rate=rate,
        first_user=first_user,
    )  # fmt: skip
    summary = observed.result.summary()
    good = observed.result.successes
    return {
        "rate": rate,
        "goodput": round(good / seconds, 1),
        "p99_ms": summary["p99_ms"],
        "errors": summary["errors"],
        "observed": observed,
    }


def overload(platform: Platform) -> DrillResult:
    def run(result: DrillResult) -> None:
        # Capacity: the highest steady rate answered whole (no errors) at p99 under 500 ms.
        ladder = []
        capacity = 0.0
        failed_at = None

        def whole(rate: float) -> bool:
            step = _step(platform, rate, 10.0, first_user=0)
            ladder.append({key: value for key, value in step.items() if key != "observed"})
            say(f"  capacity step {rate:.0f}/s: goodput {step['goodput']}, p99 {step['p99_ms']} ms")
            return not (step["errors"] or step["p99_ms"] > 500 or step["goodput"] < 0.97 * rate)

        for rate in (8.0, 12.0, 16.0, 20.0, 25.0, 30.0, 40.0):
            if not whole(rate):
                failed_at = rate
                break
            capacity = rate
        if capacity and failed_at is not None:
            # One more step halfway to the first failing one: capacity within a quarter step.
            middle = (capacity + failed_at) / 2
            if whole(middle):
                capacity = middle
        result.tables.append(("Capacity ladder (10 s per step)", [
            {"offered/s": row["rate"], "goodput/s": row["goodput"], "p99 ms": row["p99_ms"],
             "errors": row["errors"] or "-"} for row in ladder
        ]))  # fmt: skip
        result.check(f"capacity measured: {capacity:.0f} req/s", capacity > 0)
        if not capacity:
            return
        offered = 2 * capacity
        observed = under_load(
            platform, before_s=30.0, fault=lambda: None, after_s=0.0, rate=offered
        )  # fmt: skip
        observed.fill(result, None)
        goodput = observed.result.successes / 30.0
        result.check(
            f"goodput at {offered:.0f} req/s offered: {goodput:.1f}/s = "
            f"{goodput / capacity:.0%} of capacity; aim >= 80%",
            goodput >= 0.8 * capacity,
        )
        refused = sum(observed.result.errors.get(code, 0) for code in REFUSALS)
        others = {
            code: count for code, count in observed.result.errors.items()
            if code not in REFUSALS
        }  # fmt: skip
        refusal_p50 = observed.refusals.percentile(0.5) * 1000
        refusal_p99 = observed.refusals.percentile(0.99) * 1000
        # Fast: a refusal comes back while the caller has most of its deadline left to try
        # elsewhere (a quarter of the load's 2 s), and no call runs into its deadline instead.
        limit_ms = 500.0
        timed_out = observed.result.errors.get("DEADLINE_EXCEEDED", 0)
        result.check(
            f"refusals: {refused} (UNAVAILABLE, OVERLOADED) at p50 {refusal_p50:.0f} ms, p99 "
            f"{refusal_p99:.0f} ms; other errors {others or 0}; aim: p99 under {limit_ms:.0f} ms "
            "(a quarter of the deadline) and no DEADLINE_EXCEEDED",
            refused > 0 and refusal_p99 < limit_ms and timed_out == 0,
        )
        result.notes.append(
            "admission control queues a call at most server.max_queue_wait_ms (100 ms); the rest "
            "of a refusal's time is the saturated event loop and the client's own"
        )
        result.notes.append(
            "client errors here are the overload's refusals (load shedding), counted apart; "
            f"goodput counts every answer ({observed.count('degraded')} of them degraded); "
            "capacity is the highest ladder step answered whole (with one step halfway to the "
            "first that was not), so the real one lies below the next step tried"
        )

    return timed(
        "overload at 2x capacity for 30 s",
        "goodput >= 80% of capacity; refusals fast",
        run,
    )


__all__ = [
    "STEADY_RATE",
    "kill_rank",
    "kill_retrieve",
    "kill_shard",
    "overload",
    "rolling_restart",
    "stop_model_server",
]
