"""`recsys backup ...`: create, list, verify and restore backups of a deployment
(recsys.backup, docs/backup.md)."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from recsys.cli_common import ConfigOption, fail, settings_or_exit
from recsys.errors import RecsysError
from recsys.settings import CONFIG_FILE_ENV

if TYPE_CHECKING:
    from recsys.backup.location import BackupLocation
    from recsys.backup.restore import RestoreReport

backup_app = typer.Typer(
    help="Back up a deployment (snapshots, models, releases, SQL, features) and restore it.",
    no_args_is_help=True,
)
LocationOption = Annotated[
    str | None,
    typer.Option(
        "--from",
        help="Backup location: a folder or an fsspec URL (default backup.location).",
    ),
]


def _say(message: str) -> None:
    typer.echo(f"[{time.strftime('%H:%M:%S')}] {message}", err=True)


def _location(location: str) -> BackupLocation:
    from recsys.backup.location import open_location

    try:
        return open_location(location)
    except RecsysError as error:
        raise fail(error) from error


def _size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


@backup_app.command("create")
def create(
    config: ConfigOption = None,
    to: Annotated[
        str | None,
        typer.Option("--to", help="Backup location: a folder or an fsspec URL (backup.location)."),
    ] = None,
) -> None:
    """Back up the deployment the settings describe: verified index snapshots, the model
    repository, release manifests, the neighbour store, a SQL dump (one snapshot transaction)
    and the feature store, with a manifest of checksums written last; then apply retention
    (backup.keep, backup.max_age_hours)."""
    from sqlalchemy.exc import SQLAlchemyError

    from recsys.backup.create import create_backup

    settings = settings_or_exit(config, {})
    location = _location(to or settings.backup.location)
    try:
        result = asyncio.run(create_backup(settings, location, say=_say))
    except (RecsysError, SQLAlchemyError, OSError) as error:
        raise fail(error) from error
    manifest = result.manifest
    counts, versions = manifest.counts, manifest.versions
    typer.echo(
        f"backup {manifest.backup_id} in {result.location}: {len(manifest.files)} files, "
        f"{_size(manifest.size)}, {manifest.seconds:.1f} s"
    )
    typer.echo(
        f"  versions: model {versions.model_version or '-'}, embeddings "
        f"{versions.embedding_version or '-'}, index {versions.index_version or '-'}"
        + (f", release {versions.release_id}" if versions.release_id else "")
    )
    typer.echo(
        f"  {counts.items} items, {counts.users} users, {counts.interactions} interactions "
        f"(newest {_moment(manifest.newest_interaction_at)}), {counts.user_embeddings} user "
        f"embeddings, {counts.index_items} indexed items"
    )
    if manifest.quality is not None:
        typer.echo(
            f"  quality baseline: NDCG@{manifest.quality.k} {manifest.quality.ndcg:.4f} over "
            f"{len(manifest.quality.users)} users"
        )
    for note in manifest.notes:
        typer.echo(f"  note: {note}")
    if result.removed:
        typer.echo(f"  retention removed: {', '.join(result.removed)}")


def _moment(value: object) -> str:
    import datetime as dt

    if not isinstance(value, dt.datetime):
        return "-"
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@backup_app.command("list")
def list_backups(config: ConfigOption = None, location: LocationOption = None) -> None:
    """The complete backups of the location, oldest first."""
    from recsys.backup.inventory import list_backups as listed

    settings = settings_or_exit(config, {})
    where = _location(location or settings.backup.location)
    try:
        backups = listed(where)
    except (RecsysError, OSError) as error:
        raise fail(error) from error
    if not backups:
        typer.echo(f"no backups in {where.description}")
        return
    typer.echo(
        f"{'backup':<25} {'created (UTC)':<20} {'size':>10} {'items':>8} {'users':>8} "
        f"{'interactions':>12}  {'newest interaction':<20} versions"
    )
    for entry in backups:
        manifest = entry.manifest
        if manifest is None:
            typer.echo(f"{entry.backup_id:<25} unreadable: {entry.problem}")
            continue
        counts, versions = manifest.counts, manifest.versions
        typer.echo(
            f"{entry.backup_id:<25} {_moment(manifest.created_at)[:19]:<20} "
            f"{_size(manifest.size):>10} {counts.items:>8} {counts.users:>8} "
            f"{counts.interactions:>12}  {_moment(manifest.newest_interaction_at)[:19]:<20} "
            f"{versions.model_version or '-'} {versions.index_version or '-'}"
        )


@backup_app.command("verify")
def verify(
    backup_id: Annotated[
        str | None, typer.Argument(help="A backup id or latest (default: every backup).")
    ] = None,
    config: ConfigOption = None,
    location: LocationOption = None,
) -> None:
    """Read every file of the backup(s) and compare sizes and SHA-256 with the manifest; exit 1
    naming the first file that differs."""
    from recsys.backup.inventory import verify_backup

    settings = settings_or_exit(config, {})
    where = _location(location or settings.backup.location)
    try:
        ids = [where.resolve(backup_id)] if backup_id else where.backup_ids()
    except RecsysError as error:
        raise fail(error) from error
    if not ids:
        typer.echo(f"no backups in {where.description}")
        return
    failed = 0
    for one in ids:
        try:
            manifest = verify_backup(where, one)
        except (RecsysError, OSError) as error:
            failed += 1
            message = error.message if isinstance(error, RecsysError) else str(error)
            typer.echo(f"{one}: CORRUPT: {message}")
            continue
        typer.echo(f"{one}: ok ({len(manifest.files)} files, {_size(manifest.size)})")
    if failed:
        raise typer.Exit(code=1)


@backup_app.command("restore")
def restore(
    into: Annotated[
        Path,
        typer.Option(
            "--into",
            file_okay=False,
            help="The folder of the restored deployment (created; must be empty unless --force).",
        ),
    ],
    backup_id: Annotated[str, typer.Argument(help="A backup id, or latest.")] = "latest",
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            dir_okay=False,
            help="Settings of the target (also RECSYS_CONFIG_FILE): its database and feature "
            "store receive the data, and its backup.location is read. Without one: SQLite and "
            "the in-memory feature store, in the folder.",
        ),
    ] = None,
    location: LocationOption = None,
    force: Annotated[
        bool,
        typer.Option("--force", help="Replace what the target holds instead of refusing."),
    ] = False,
    validate: Annotated[
        bool,
        typer.Option(
            "--validate/--no-validate", help="Check the restored deployment (and serve it)."
        ),
    ] = True,
    report: Annotated[
        Path | None, typer.Option(help="Write the steps and checks as JSON here.")
    ] = None,
) -> None:
    """Bring an empty deployment back from a backup and validate it: the index verifies with the
    backup's version and items, model version and counts match, sample users get
    recommendations through the serving code, quality within 95% of the backup's baseline.
    Exit 1 when any check fails."""
    from sqlalchemy.exc import SQLAlchemyError

    from recsys.backup.restore import restore_backup

    settings = settings_or_exit(config, {})
    has_target = config is not None or bool(os.environ.get(CONFIG_FILE_ENV))
    where = _location(location or settings.backup.location)
    started = time.perf_counter()
    try:
        result = asyncio.run(
            restore_backup(
                where,
                backup_id,
                into,
                target=settings if has_target else None,
                force=force,
                validate=validate,
                sample_users=settings.backup.sample_users,
                say=_say,
            )
        )
    except (RecsysError, SQLAlchemyError, OSError) as error:
        raise fail(error) from error
    seconds = time.perf_counter() - started
    _print_report(result, seconds)
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(
            json.dumps({**result.as_dict(), "seconds": round(seconds, 3)}, indent=2) + "\n"
        )
    if not result.ok:
        raise typer.Exit(code=1)


def _print_report(result: RestoreReport, seconds: float) -> None:
    typer.echo(f"restored backup {result.backup_id} into {result.folder} in {seconds:.1f} s")
    for name, step_seconds in result.steps.items():
        typer.echo(f"  {step_seconds:7.2f} s  {name}")
    for note in result.notes:
        typer.echo(f"  note: {note}")
    if result.checks:
        width = max(len(check.name) for check in result.checks)
        typer.echo(f"\n{'check':<{width}}  result  measured (expected)")
        for check in result.checks:
            verdict = "pass" if check.ok else "FAIL"
            typer.echo(f"{check.name:<{width}}  {verdict:<6}  {check.measured} ({check.expected})")
    typer.echo(f"\nserve it: recsys serve embedded --config {result.settings_file}")
