"""`recsys migrate-embeddings`: backfills user embeddings of a new embedding version (seed
Simulation 6) into the configured feature store; see recsys.migration."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from recsys.cli_common import ConfigOption, fail, settings_or_exit
from recsys.errors import ConfigurationError, RecsysError
from recsys.settings import RecsysSettings

if TYPE_CHECKING:
    from recsys.data.features_file import FeatureSnapshot
    from recsys.migration import MigrationProgress


class _Reporter:
    """A progress line on stderr at most every `interval_seconds`; keeps the latest state."""

    def __init__(self, interval_seconds: float) -> None:
        self.interval_seconds = interval_seconds
        self.shown = time.monotonic()
        self.latest: MigrationProgress | None = None

    def __call__(self, progress: MigrationProgress) -> None:
        self.latest = progress
        now = time.monotonic()
        if now - self.shown >= self.interval_seconds:
            self.shown = now
            typer.echo(f"[{time.strftime('%H:%M:%S')}] {progress.describe()}", err=True)


def migrate_embeddings(
    features_file: Annotated[
        Path,
        typer.Argument(
            help="The feature snapshot of the new embedding version (`recsys train` writes "
            "OUTPUT/features.npz).",
            exists=True,
            dir_okay=False,
            readable=True,
        ),
    ],
    config: ConfigOption = None,
    rate: Annotated[
        float | None,
        typer.Option(min=0.001, help="Users written per second (migration.rate_per_second)."),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            min=1, help="Users read, checked and written together (migration.batch_size)."
        ),
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option(min=1, help="Write at most this many users in this run (the next resumes)."),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Migrate even when the snapshot's embedding version is not the current release's.",
        ),
    ] = False,
) -> None:
    """Backfill the users' embeddings of FEATURES_FILE's embedding version into the configured
    feature store, at a bounded rate, leaving out erased users. Resumable: users already
    holding that version are skipped, so it can be stopped and run again at any time. Until a
    user is migrated, Recommend answers them from popularity (flagged popularity_candidates)."""
    migration: dict[str, Any] = {}
    if rate is not None:
        migration["rate_per_second"] = rate
    if batch_size is not None:
        migration["batch_size"] = batch_size
    settings = settings_or_exit(config, {"migration": migration} if migration else {})
    from sqlalchemy.exc import SQLAlchemyError

    from recsys.data.features_file import load_features

    try:
        snapshot = load_features(features_file)
        _check_version(settings, snapshot.embedding_version, force=force)
        if settings.features.store == "in_memory":
            raise ConfigurationError(
                "the in-memory feature store keeps nothing across processes: configure "
                "features.store (e.g. redis), or serve with features.preload_path = "
                f"{features_file}"
            )
    except (RecsysError, ValueError) as error:
        raise fail(error) from error
    reporter = _Reporter(settings.migration.progress_interval_seconds)
    migration_settings = settings.migration
    typer.echo(
        f"migrating {len(snapshot.user_ids)} users to embedding version "
        f"{snapshot.embedding_version} at {migration_settings.rate_per_second:g} users/s, "
        f"in batches of {migration_settings.batch_size}",
        err=True,
    )
    try:
        progress, counts = asyncio.run(_migrate(settings, snapshot, limit, reporter))
    except KeyboardInterrupt:
        latest = reporter.latest
        done = latest.describe() if latest is not None else "nothing written"
        typer.echo(f"recsys: interrupted at {done}; run again to resume", err=True)
        raise typer.Exit(code=130) from None
    except (RecsysError, SQLAlchemyError, OSError) as error:
        latest = reporter.latest
        if latest is not None:
            typer.echo(f"stopped at {latest.describe()}; run again to resume", err=True)
        raise fail(error) from error
    typer.echo(
        f"migrated {progress.migrated} users to embedding version {progress.embedding_version} "
        f"in {progress.seconds:.1f} s ({progress.rate:.0f} users/s); skipped {progress.skipped} "
        f"already migrated and {progress.erased} erased"
    )
    if not progress.finished:
        typer.echo(
            f"stopped at --limit: {progress.total - progress.looked_at} users not looked at "
            "yet; run again to resume"
        )
    if counts is not None:
        described = ", ".join(
            f"{version} {count}" for version, count in sorted(counts.items()) if count
        )
        typer.echo(f"users per embedding version in the feature store: {described or 'none'}")


def _check_version(settings: RecsysSettings, version: str, *, force: bool) -> None:
    """The snapshot must be of the version the deployment serves: embeddings of another one
    would all be answered from popularity."""
    from recsys.release import current_release

    release = current_release(settings.release.directory)
    expected = (
        release.embedding_version
        if release is not None
        else settings.index.expected_embedding_version
    )
    if expected is None or expected == version:
        return
    source = (
        f"the current release {release.release_id}"
        if release is not None
        else "index.expected_embedding_version"
    )
    message = f"the snapshot holds embedding version {version}, {source} serves {expected}"
    if not force:
        raise ConfigurationError(
            f"{message}: publish the release of {version} first, or pass --force"
        )
    typer.echo(f"recsys: {message}; migrating anyway (--force)", err=True)


async def _migrate(
    settings: RecsysSettings, snapshot: FeatureSnapshot, limit: int | None, reporter: _Reporter
) -> tuple[MigrationProgress, dict[str, int] | None]:
    from recsys.data.erasures import absent_sqlite_file, erasure_records
    from recsys.migration import migrate_user_embeddings
    from recsys.ports.features import FeatureStore
    from recsys.registry import create_adapter

    async with contextlib.AsyncExitStack() as stack:
        metadata = await stack.enter_async_context(erasure_records(settings))
        if metadata is None:
            typer.echo(
                f"no metadata database at {absent_sqlite_file(settings.database)}: "
                "no erased users to leave out",
                err=True,
            )
        store = create_adapter("feature_store", settings.features.store, settings)
        assert isinstance(store, FeatureStore)
        stack.push_async_callback(store.close)
        progress = await migrate_user_embeddings(
            snapshot,
            store,
            metadata=metadata,
            settings=settings.migration,
            limit=limit,
            on_progress=reporter,
        )
        counts: dict[str, int] | None = None
        with contextlib.suppress(RecsysError):  # the summary does without it
            counts = await store.embedding_version_counts()
    return progress, counts
