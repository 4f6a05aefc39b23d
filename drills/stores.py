"""Drills on the stores: Redis killed and restarted empty, Redis frozen (SIGSTOP), a PostgreSQL
table lock, and the PostgreSQL primary lost with its streaming replica promoted."""

from __future__ import annotations

import threading
import time

from drills.core import Observed, timed, under_load
from drills.platform import Platform
from drills.report import DrillResult

REDIS_OUTAGE_S = 20.0
TABLE_LOCK_S = 10.0
# The seconds between the primary's loss and the promotion (an operator's or a failover
# manager's reaction; Patroni's default loop is 10 s).
PROMOTE_AFTER_S = 5.0


class Liveness:
    """Polls Recommend's liveness every half second while the drill runs."""

    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.checks = 0
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.checks += 1
            if not self.platform.live(timeout=1.0):
                self.failures += 1
            self._stop.wait(0.5)

    def __enter__(self) -> Liveness:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def _no_errors(result: DrillResult, observed: Observed) -> None:
    errors = observed.result.error_count
    detail = dict(observed.result.errors) or "none"
    result.check(f"client errors: {errors} ({detail}); aim 0", errors == 0)


def _redis_drill(platform: Platform, *, freeze: bool) -> DrillResult:
    def run(result: DrillResult) -> None:
        redis = platform.redis

        def fault() -> None:
            redis.freeze() if freeze else redis.kill()

        def repair() -> None:
            redis.thaw() if freeze else redis.start()

        def restores() -> dict[str, float]:
            return {
                name: platform.metric(
                    name, "recsys_feature_restores_total", {"outcome": "restored"}
                ) or 0.0
                for name in sorted(platform.child_pids())
            }  # fmt: skip

        restores_before = restores()
        with Liveness(platform) as liveness:
            observed = under_load(
                platform, before_s=6, fault=fault, hold_s=REDIS_OUTAGE_S, repair=repair,
                after_s=30,
            )  # fmt: skip
        observed.fill(result, "degraded")
        _no_errors(result, observed)
        flagged = observed.count("default_features")
        result.check(f"answers flagged default_features: {flagged}; aim > 0", flagged > 0)
        result.check(
            f"liveness SERVING throughout: {liveness.checks - liveness.failures} of "
            f"{liveness.checks} checks",
            liveness.failures == 0 and liveness.checks > 0,
        )
        recovered = observed.recover("features_missing")
        result.check(
            "known users answered with their own features again "
            + (
                f"{recovered:.0f} s after the {'thaw' if freeze else 'restart'}"
                if recovered is not None
                else "- never"
            )
            + ("" if freeze else " (the warm-up restored the feature snapshot; no hand step)"),
            recovered is not None,
        )
        if not freeze:
            restored = {
                name: value - restores_before.get(name, 0.0)
                for name, value in restores().items()
                if value > restores_before.get(name, 0.0)
            }
            result.check(
                f"restores of the feature snapshot during the drill: {restored or 'none'}",
                bool(restored),
            )

    if freeze:
        name, criterion = (
            f"Redis frozen (SIGSTOP) for {REDIS_OUTAGE_S:.0f} s",
            "0 client errors, defaults flagged, liveness SERVING throughout",
        )
    else:
        name, criterion = (
            f"Redis killed for {REDIS_OUTAGE_S:.0f} s, restarted empty",
            "0 client errors, defaults flagged, liveness SERVING throughout, features restored "
            "from the last snapshot without a hand step",
        )
    return timed(name, criterion, run)


def redis_killed(platform: Platform) -> DrillResult:
    return _redis_drill(platform, freeze=False)


def redis_frozen(platform: Platform) -> DrillResult:
    return _redis_drill(platform, freeze=True)


def _hold_lock(
    port: int, tables: list[str], seconds: float, ready: threading.Event, errors: list[str]
) -> None:
    import psycopg

    try:
        with psycopg.connect(
            host="127.0.0.1", port=port, dbname="postgres", user="postgres", autocommit=False
        ) as connection:
            with connection.cursor() as cursor:
                for table in tables:
                    cursor.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
                ready.set()
                time.sleep(seconds)
            connection.rollback()
    except Exception as error:  # reported by the drill
        errors.append(repr(error))
        ready.set()


def table_lock(platform: Platform) -> DrillResult:
    tables = ["items", "interactions", "users"]

    def run(result: DrillResult) -> None:
        errors: list[str] = []
        threads: list[threading.Thread] = []

        def fault() -> None:
            ready = threading.Event()
            thread = threading.Thread(
                target=_hold_lock,
                args=(platform.postgres.primary_port, tables, TABLE_LOCK_S, ready, errors),
                daemon=True,
            )
            thread.start()
            threads.append(thread)
            if not ready.wait(10):
                errors.append("the lock was not taken within 10 s")

        observed = under_load(platform, before_s=6, fault=fault, after_s=TABLE_LOCK_S + 14)
        for thread in threads:
            thread.join(15)
        observed.fill(result, "degraded")
        result.check(
            f"the lock was taken and held {TABLE_LOCK_S:.0f} s ({errors or 'no error'})", not errors
        )
        _no_errors(result, observed)
        flagged = observed.count("metadata_unavailable")
        result.check(
            f"answers flagged metadata_unavailable while the tables were locked: {flagged}; aim > "
            "0 (the lock reached the serving path; reads give up after "
            "recommend.metadata_timeout_ms)",
            flagged > 0,
        )

    return timed(
        f"PostgreSQL table lock for {TABLE_LOCK_S:.0f} s (items, interactions, users)",
        "0 client errors",
        run,
    )


def primary_failure(platform: Platform) -> DrillResult:
    def run(result: DrillResult) -> None:
        marks: dict[str, float] = {}
        origin = time.monotonic()

        def fault() -> None:
            marks["fault"] = time.monotonic() - origin
            platform.postgres.stop_primary(mode="immediate")

        def repair() -> None:
            marks["promote"] = time.monotonic() - origin
            platform.postgres.promote()
            marks["promoted"] = time.monotonic() - origin

        pids_before = platform.child_pids()
        observed = under_load(
            platform, before_s=6, fault=fault, hold_s=PROMOTE_AFTER_S, repair=repair, after_s=30
        )  # fmt: skip
        restarted = sorted(
            name for name, pid in platform.child_pids().items() if pids_before.get(name) != pid
        )
        result.check(f"no process restarted: {restarted or 'none'}", not restarted)
        observed.fill(result, "metadata_unavailable")
        _no_errors(result, observed)
        flagged = observed.count("metadata_unavailable")
        result.check(
            f"answers flagged metadata_unavailable between the loss and the promotion: {flagged}; "
            "aim > 0",
            flagged > 0,
        )
        recovered = observed.recover("metadata_unavailable")
        result.check(
            "whole answers again "
            + (f"{recovered:.0f} s after the promotion" if recovered is not None else "- never")
            + " through the same multi-host connection string, no restart",
            recovered is not None,
        )
        wrote = _write_through_platform_url(platform)
        result.check(
            f"a write through the platform's database URL lands on the new primary ({wrote})",
            wrote == "ok",
        )
        result.notes.append(
            f"primary stopped (immediate) at {marks['fault']:.1f} s, replica promoted "
            f"{marks['promote'] - marks['fault']:.1f} s later, promotion took "
            f"{marks['promoted'] - marks['promote']:.1f} s"
        )

    return timed(
        "PostgreSQL primary failure, replica promoted",
        "0 client errors, degraded answers flagged in between, the platform reconnects",
        run,
    )


def _write_through_platform_url(platform: Platform) -> str:
    from sqlalchemy import text

    from recsys.metadata.database import create_migration_engine
    from recsys.settings import DatabaseSettings

    engine = create_migration_engine(DatabaseSettings(url=platform.settings["database"]["url"]))
    try:
        with engine.begin() as connection:
            connection.execute(text("CREATE TABLE IF NOT EXISTS drill_writes (at timestamptz)"))
            connection.execute(text("INSERT INTO drill_writes VALUES (now())"))
        return "ok"
    except Exception as error:  # reported by the drill
        return repr(error)[:200]
    finally:
        engine.dispose()
