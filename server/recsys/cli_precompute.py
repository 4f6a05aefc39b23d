"""`recsys precompute`: pre-computed answers for the most active users, by activity tier."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from recsys.cli_common import ConfigOption, fail, settings_or_exit
from recsys.errors import ConfigurationError, RecsysError
from recsys.observability.logging import configure_logging


def precompute(
    tier: Annotated[
        list[str] | None,
        typer.Option(
            "--tier",
            help="A tier of precompute.tiers to run (repeat for several); default: every tier. "
            "Cron runs each at its own interval (hourly, daily, weekly).",
        ),
    ] = None,
    budget_seconds: Annotated[
        float | None,
        typer.Option(
            min=0.001,
            help="Start no user after this many seconds (precompute.budget_seconds).",
        ),
    ] = None,
    concurrency: Annotated[
        int | None,
        typer.Option(min=1, max=1024, help="Users at once (precompute.concurrency)."),
    ] = None,
    report: Annotated[
        Path | None, typer.Option(help="Write the summary as JSON here.", dir_okay=False)
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Pre-compute Recommend answers (precomputed:{user}:{surface}) for the users of the
    activity tiers, with each tier's TTL; prints users per tier, written, skipped, failures,
    seconds and users/s. Exits 1 only when every answer failed."""
    from sqlalchemy.exc import SQLAlchemyError

    from recsys.cli_common import stage_progress
    from recsys.precompute import run_precompute

    overrides: dict[str, object] = {}
    keys = {
        key: value
        for key, value in (("budget_seconds", budget_seconds), ("concurrency", concurrency))
        if value is not None
    }
    if keys:
        overrides["precompute"] = keys
    settings = settings_or_exit(config, overrides)
    configure_logging(settings.logging.level, settings.logging.format)
    section = settings.precompute
    with contextlib.ExitStack() as bars:
        advance: list[Callable[[str, int], None]] = []

        def planned(users: int) -> None:
            # The bar opens once the tiers are assigned and the number of users known.
            advance.append(bars.enter_context(stage_progress({"precompute": users})))

        def done() -> None:
            for step in advance:
                step("precompute", 1)

        try:
            result = asyncio.run(
                run_precompute(
                    settings,
                    chosen=tier or None,
                    budget_seconds=section.budget_seconds,
                    concurrency=section.concurrency,
                    on_plan=planned,
                    on_user=done,
                )
            )
        except ConfigurationError as error:
            typer.echo(f"recsys: {error.message}", err=True)
            raise typer.Exit(code=2) from error
        except (RecsysError, SQLAlchemyError, OSError, RuntimeError) as error:
            raise fail(error) from error
    typer.echo(result.table())
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps(result.as_dict(), indent=2) + "\n")
    if result.all_failed:
        raise typer.Exit(code=1)
