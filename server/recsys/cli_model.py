"""`recsys model ...`: the ranking model repository."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from recsys.errors import RecsysError
from recsys.ranking.model_repository import ModelRepository

model_app = typer.Typer(help="Manage the ranking model repository.", no_args_is_help=True)

RepositoryOption = Annotated[
    Path, typer.Option("--repository", "-r", help="Triton-layout model repository.")
]


@model_app.command("init-reference")
def init_reference(
    repository: RepositoryOption = Path("triton_models"),
    model_name: Annotated[str, typer.Option(help="Model folder name.")] = "ranker",
    version: Annotated[str, typer.Option(help="Version folder (a number).")] = "1",
) -> None:
    """Write the reference ranking model (logistic, fixed weights) as an ONNX version."""
    from recsys.ranking.reference_model import write_reference_version

    if not version.isdigit():
        typer.echo("recsys: versions are numbers (Triton's layout)", err=True)
        raise typer.Exit(code=2)
    folder = write_reference_version(repository / model_name, version)
    typer.echo(f"wrote {folder}")


@model_app.command("check")
def check(
    repository: RepositoryOption = Path("triton_models"),
    model_name: Annotated[str, typer.Option(help="Model folder name.")] = "ranker",
) -> None:
    """Check every version's schema and run a canary batch through ONNX Runtime."""
    from recsys.adapters.rankers.onnx import load_session

    store = ModelRepository(repository, model_name)
    failures = 0
    for version in store.versions():
        try:
            load_session(store.read(version), threads=1)
        except RecsysError as error:
            failures += 1
            typer.echo(f"{model_name}:{version} REFUSED: {error.message}")
            continue
        typer.echo(f"{model_name}:{version} ok")
    if failures or not store.versions():
        raise typer.Exit(code=1)
