"""Options and helpers shared by the `recsys` sub-commands."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from recsys.errors import ConfigurationError, RecsysError
from recsys.settings import RecsysSettings, load_settings

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="TOML settings file (also RECSYS_CONFIG_FILE). Environment RECSYS_* overrides it.",
        dir_okay=False,
    ),
]
MovieLensOption = Annotated[
    Path | None,
    typer.Option(
        "--movielens",
        help="A MovieLens folder (u.data/u.item/u.user or ratings.csv/movies.csv); "
        "without it a synthetic catalogue is generated.",
        file_okay=False,
        exists=True,
    ),
]
ItemsOption = Annotated[int, typer.Option("--items", min=1, help="Synthetic: items.")]
UsersOption = Annotated[int, typer.Option("--users", min=1, help="Synthetic: users.")]
InteractionsOption = Annotated[
    int, typer.Option("--interactions-per-user", min=1, help="Synthetic: interactions per user.")
]
SeedOption = Annotated[int, typer.Option("--seed", help="Synthetic: random seed.")]


def settings_or_exit(config: Path | None, overrides: dict[str, Any]) -> RecsysSettings:
    try:
        return load_settings(config, **overrides)
    except ConfigurationError as error:
        typer.echo(f"recsys: {error.message}", err=True)
        raise typer.Exit(code=2) from error


def fail(error: Exception) -> typer.Exit:
    """Prints the error as one line and returns the exit (code 1) to raise."""
    from sqlalchemy.exc import SQLAlchemyError

    from recsys.metadata.database import describe_error

    if isinstance(error, SQLAlchemyError):
        # Not str(error): it goes on with the whole statement.
        message = describe_error(error)
    elif isinstance(error, RecsysError):
        message = error.message
    else:
        message = str(error)
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    typer.echo(f"recsys: {' '.join(lines) or type(error).__name__}", err=True)
    return typer.Exit(code=1)


def catalogue_from(
    movielens: Path | None, items: int, users: int, interactions_per_user: int, seed: int
) -> Any:
    """The MovieLens catalogue at `movielens`, or a synthetic one of the given size."""
    from recsys.data.movielens import load_movielens
    from recsys.data.synthetic import synthetic_catalogue

    if movielens is not None:
        return load_movielens(movielens)
    return synthetic_catalogue(items, users, interactions_per_user=interactions_per_user, seed=seed)


@contextlib.contextmanager
def stage_progress(totals: dict[str, int]) -> Iterator[Callable[[str, int], None]]:
    """Progress bars on stderr, one per stage (hidden when stderr is not a terminal); yields
    the `progress(stage, count)` callback the loaders take."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    console = Console(stderr=True)
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, disable=not console.is_terminal) as progress:
        tasks = {stage: progress.add_task(stage, total=total) for stage, total in totals.items()}
        yield lambda stage, count: progress.advance(tasks[stage], count)
