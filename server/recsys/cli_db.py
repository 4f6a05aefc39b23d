"""`recsys db ...`: the SQL metadata schema."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from recsys.cli_common import fail, settings_or_exit

db_app = typer.Typer(help="Manage the SQL metadata schema (Alembic).", no_args_is_help=True)


@db_app.command("upgrade")
def upgrade(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="TOML settings file.", dir_okay=False)
    ] = None,
    revision: Annotated[str, typer.Option(help="Target revision.")] = "head",
) -> None:
    """Bring the database named by database.url to the latest schema (idempotent)."""
    from alembic.util import CommandError
    from sqlalchemy.exc import SQLAlchemyError

    from recsys.metadata.migrate import current_revision
    from recsys.metadata.migrate import upgrade as run_upgrade

    settings = settings_or_exit(config, {})
    try:
        run_upgrade(settings.database, revision)
        typer.echo(f"database at revision {current_revision(settings.database)}")
    except (SQLAlchemyError, CommandError) as error:
        raise fail(error) from error
