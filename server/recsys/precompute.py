"""`recsys precompute`: pre-computed answers for the most active users (seed Journey 2 and
"Cost Optimization", docs/recommend.md "Pre-computed results").

Users active in the window are ranked into tiers (`recsys.domain.recommend.tiers`); for each
chosen user and surface the Recommend pipeline runs without the rate limit and the caches
(`RecommendPipeline.compute`), and an undegraded answer is written to
`precomputed:{user}:{surface}` with the tier's TTL. A bounded number of users run at once; past
the time budget no user is started, and those left are reported as not reached.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime as dt
import importlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from recsys.domain.recommend.pipeline import to_cached
from recsys.domain.recommend.tiers import ON_DEMAND, ActivityTier, assign_tiers
from recsys.domain.recommend.values import MAX_LIMIT, Recommendation
from recsys.domain.requests import RecommendQuery, RequestContext
from recsys.errors import ConfigurationError, RecsysError
from recsys.ports.cache import PRECOMPUTED, RecommendationCache
from recsys.ports.metadata import MetadataRepository
from recsys.settings import RecsysSettings

logger = logging.getLogger(__name__)


class FreshAnswers(Protocol):
    """What the job needs of the pipeline (`RecommendPipeline.compute`)."""

    async def compute(self, query: RecommendQuery) -> Recommendation: ...


@dataclasses.dataclass
class TierReport:
    """One tier's run. Users are counted once; written, skipped and failed count entries (a
    user and a surface)."""

    name: str
    ttl_seconds: int
    users: int = 0
    reached: int = 0
    written: int = 0
    skipped: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    failed: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)

    @property
    def not_reached(self) -> int:
        return self.users - self.reached


@dataclasses.dataclass
class PrecomputeReport:
    tiers: list[TierReport]
    # Active users no chosen tier takes (served live); inactive users are not counted.
    on_demand: int
    surfaces: tuple[str, ...]
    concurrency: int
    budget_seconds: float
    seconds: float = 0.0

    @property
    def reached(self) -> int:
        return sum(tier.reached for tier in self.tiers)

    @property
    def users_per_second(self) -> float:
        return self.reached / self.seconds if self.seconds > 0 else 0.0

    @property
    def entries(self) -> int:
        return sum(
            tier.written + sum(tier.skipped.values()) + sum(tier.failed.values())
            for tier in self.tiers
        )

    @property
    def all_failed(self) -> bool:
        """Entries were attempted and none was written or skipped: the exit code says so."""
        failed = sum(sum(tier.failed.values()) for tier in self.tiers)
        return self.entries > 0 and failed == self.entries

    def as_dict(self) -> dict[str, Any]:
        return {
            "tiers": [
                {
                    "name": tier.name,
                    "ttl_seconds": tier.ttl_seconds,
                    "users": tier.users,
                    "reached": tier.reached,
                    "not_reached": tier.not_reached,
                    "written": tier.written,
                    "skipped": dict(tier.skipped),
                    "failed": dict(tier.failed),
                }
                for tier in self.tiers
            ],
            "on_demand_users": self.on_demand,
            "surfaces": list(self.surfaces),
            "concurrency": self.concurrency,
            "budget_seconds": self.budget_seconds,
            "seconds": round(self.seconds, 3),
            "users_per_second": round(self.users_per_second, 2),
        }

    def table(self) -> str:
        header = ("tier", "ttl s", "users", "written", "skipped", "failed", "not reached")
        rows = [
            (
                tier.name,
                str(tier.ttl_seconds),
                str(tier.users),
                str(tier.written),
                str(sum(tier.skipped.values())),
                str(sum(tier.failed.values())),
                str(tier.not_reached),
            )
            for tier in self.tiers
        ]
        widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
        lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
                 for row in (header, *rows)]  # fmt: skip
        lines.append(f"{ON_DEMAND}: {self.on_demand} active users, served live")
        for label, counts in (
            ("skipped", sum((tier.skipped for tier in self.tiers), collections.Counter[str]())),
            ("failed", sum((tier.failed for tier in self.tiers), collections.Counter[str]())),
        ):
            if counts:
                reasons = ", ".join(f"{reason} {count}" for reason, count in counts.most_common())
                lines.append(f"{label}: {reasons}")
        lines.append(
            f"{self.reached} users x {len(self.surfaces)} surfaces in {self.seconds:.2f} s: "
            f"{self.users_per_second:.1f} users/s (concurrency {self.concurrency}, "
            f"budget {self.budget_seconds:g} s)"
        )
        return "\n".join(lines)


class PrecomputeJob:
    def __init__(
        self,
        pipeline: FreshAnswers,
        cache: RecommendationCache,
        metadata: MetadataRepository,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pipeline = pipeline
        self.cache = cache
        self.metadata = metadata
        self.clock = clock

    async def run(
        self,
        tiers: Sequence[ActivityTier],
        *,
        chosen: Sequence[str] | None = None,
        since: dt.datetime,
        surfaces: Sequence[str],
        concurrency: int,
        budget_seconds: float,
        on_plan: Callable[[int], None] | None = None,
        on_user: Callable[[], None] | None = None,
    ) -> PrecomputeReport:
        """Pre-computes the users of the `chosen` tiers (every tier when None), most active
        first. `on_plan(users)` is told how many users will be tried, `on_user()` each one
        done (progress)."""
        started = self.clock()
        names = [tier.name for tier in tiers]
        unknown = sorted(set(chosen or ()) - set(names))
        if unknown:
            raise ConfigurationError(
                f"unknown tier {', '.join(unknown)}; the tiers are {', '.join(names) or 'none'}"
            )
        selected = [tier for tier in tiers if chosen is None or tier.name in chosen]
        assigned = assign_tiers(await self.metadata.user_activity(since), tiers)
        reports = [
            TierReport(tier.name, tier.ttl_seconds, users=len(assigned[tier.name]))
            for tier in selected
        ]
        report = PrecomputeReport(
            reports,
            on_demand=len(assigned[ON_DEMAND]),
            surfaces=tuple(surfaces),
            concurrency=concurrency,
            budget_seconds=budget_seconds,
        )
        # Most active first: when the budget runs out, the least active are left.
        work = iter(
            [
                (tier_report, tier, user)
                for tier, tier_report in zip(selected, reports, strict=True)
                for user in assigned[tier.name]
            ]
        )
        if on_plan is not None:
            on_plan(sum(tier_report.users for tier_report in reports))
        deadline = started + budget_seconds

        async def worker() -> None:
            # One shared iterator: each user is taken by exactly one worker.
            for tier_report, tier, user in work:
                if self.clock() >= deadline:
                    continue  # not reached: counted as users - reached
                tier_report.reached += 1
                for surface in surfaces:
                    outcome = await self._entry(user, surface, tier)
                    if outcome == WRITTEN:
                        tier_report.written += 1
                    elif outcome.startswith(FAILED):
                        tier_report.failed[outcome.removeprefix(FAILED)] += 1
                    else:
                        tier_report.skipped[outcome] += 1
                if on_user is not None:
                    on_user()

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        report.seconds = self.clock() - started
        logger.info("precompute finished", extra={"report": report.as_dict()})
        return report

    async def _entry(self, user: str, surface: str, tier: ActivityTier) -> str:
        """WRITTEN, a skip reason, or FAILED + the error's kind."""
        query = RecommendQuery(user, surface, MAX_LIMIT, RequestContext())
        try:
            answer = await self.pipeline.compute(query)
            if answer.degradation.kinds():
                # Served for an hour or more, a degraded answer would outlive its outage.
                return "degraded:" + "+".join(answer.degradation.kinds())
            if not answer.items:
                return "empty"
            # Erased while the job ran (the tombstone names users without a profile too): no
            # entry is written for them.
            if await self.metadata.erased_user_ids([user]):
                return "erased"
            extra = {"tier": tier.name, "computed_at": dt.datetime.now(dt.UTC).isoformat()}
            await self.cache.put(
                PRECOMPUTED, user, surface, to_cached(answer, extra), tier.ttl_seconds
            )
        except RecsysError as error:
            logger.warning(
                "precompute failed for a user",
                extra={"surface": surface, "error": error.message, "kind": error.code.name},
            )
            return FAILED + error.code.name.lower()
        except Exception as error:  # a bug for one user must not end the batch
            logger.exception("precompute failed for a user", extra={"surface": surface})
            return FAILED + type(error).__name__
        return WRITTEN


WRITTEN = "written"
FAILED = "failed:"


def job_settings(settings: RecsysSettings) -> RecsysSettings:
    """The settings with every serving budget at least `precompute.read_timeout_ms`: a read
    cut at 10 or 50 ms (a cold connection, a loaded store) would degrade the answer, and a
    degraded answer is skipped, where the job can afford to wait."""
    floor = settings.precompute.read_timeout_ms

    def widened(section: Any, *names: str) -> Any:
        return section.model_copy(
            update={name: max(getattr(section, name), floor) for name in names}
        )

    return settings.model_copy(
        update={
            "recommend": widened(
                settings.recommend,
                "feature_timeout_ms",
                "cache_timeout_ms",
                "metadata_timeout_ms",
                "retrieve_timeout_ms",
                "rank_timeout_ms",
            ),
            "rank": widened(settings.rank, "timeout_ms", "feature_timeout_ms"),
            "retrieve": widened(settings.retrieve, "shard_timeout_ms"),
            "redis": widened(settings.redis, "socket_timeout_ms"),
        }
    )


def activity_tiers(settings: RecsysSettings) -> list[ActivityTier]:
    return [
        ActivityTier(tier.name, tier.top_share, tier.ttl_seconds)
        for tier in settings.precompute.tiers
    ]


async def run_precompute(
    settings: RecsysSettings,
    *,
    chosen: Sequence[str] | None,
    budget_seconds: float,
    concurrency: int,
    on_plan: Callable[[int], None] | None = None,
    on_user: Callable[[], None] | None = None,
) -> PrecomputeReport:
    """Builds what Recommend is built from in this deployment (in-process retrieval and ranking,
    or the remote services at `recommend.retrieve_target` / `rank_target`), without serving,
    and runs the job."""
    from recsys import services
    from recsys.composition import Components

    surfaces = settings.precompute.surfaces
    foreign = sorted(set(surfaces) - set(settings.recommend.surfaces))
    if foreign:
        raise ConfigurationError(
            f"precompute.surfaces names {', '.join(foreign)}, not in recommend.surfaces"
        )
    if settings.recommend.cache == "in_memory":
        raise ConfigurationError(
            "recommend.cache is in_memory: pre-computed answers would end with this process; "
            "pre-compute for a deployment whose cache is shared (redis)"
        )
    names = [
        name
        for name, remote in (
            ("retrieve", settings.recommend.retrieve_target),
            ("rank", settings.recommend.rank_target),
        )
        if not remote
    ] + ["recommend"]
    components = Components(job_settings(settings))
    try:
        for name in names:
            module, _, attribute = services.SERVICES[name].partition(":")
            build: Callable[[Components], Awaitable[object]] = getattr(
                importlib.import_module(module), attribute
            )
            await build(components)
        # What a server runs once it listens: index loading, the default embedding...
        for hook in components.startup_hooks:
            await hook()
        pipeline = components.recommend_pipeline
        assert pipeline is not None
        job = PrecomputeJob(pipeline, components.recommendation_cache, components.metadata)
        since = dt.datetime.now(dt.UTC) - dt.timedelta(
            days=components.settings.precompute.activity_window_days
        )
        return await job.run(
            activity_tiers(components.settings),
            chosen=chosen,
            since=since,
            surfaces=surfaces,
            concurrency=concurrency,
            budget_seconds=budget_seconds,
            on_plan=on_plan,
            on_user=on_user,
        )
    finally:
        await components.resources.aclose()
