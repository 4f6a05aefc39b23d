"""`recsys release ...`: publish, inspect and roll back releases (model + embeddings + index)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated

import typer

from recsys.cli_common import fail
from recsys.errors import RecsysError

release_app = typer.Typer(
    help="Tie model, embedding and index versions together; roll them out or back.",
    no_args_is_help=True,
)
DirectoryOption = Annotated[
    Path, typer.Option("--releases", "-r", help="Release directory (release.directory).")
]
SnapshotsOption = Annotated[Path, typer.Option("--snapshots", "-s", help="Snapshot folder.")]


@release_app.command("publish")
def publish(
    release_id: Annotated[str, typer.Argument(help="Name of the release, e.g. r-2026-11-29.")],
    model_version: Annotated[str, typer.Option(help="ranker:<version>")],
    embedding_version: Annotated[str, typer.Option(help="Embedding version.")],
    index_version: Annotated[str, typer.Option(help="Index snapshot version.")],
    num_shards: Annotated[int, typer.Option(min=1, help="Shards of the index.")] = 10,
    releases: DirectoryOption = Path("var/releases"),
    snapshots: SnapshotsOption = Path("var/snapshots"),
    repository: Annotated[Path, typer.Option(help="Model repository.")] = Path("triton_models"),
    model_name: Annotated[str, typer.Option(help="Model name.")] = "ranker",
) -> None:
    """Verify that the three versions fit together, record the release and activate it."""
    from recsys.adapters.snapshots.local import LocalSnapshotStore
    from recsys.index.snapshots import SnapshotManager
    from recsys.ranking.model_repository import ModelRepository
    from recsys.release import ReleaseManifest, ReleaseStore

    manifest = ReleaseManifest(
        release_id=release_id,
        model_version=model_version,
        embedding_version=embedding_version,
        index_version=index_version,
        num_shards=num_shards,
        created_at=dt.datetime.now(dt.UTC),
    )
    try:
        ReleaseStore(releases).publish(
            manifest,
            snapshots=SnapshotManager(LocalSnapshotStore(snapshots)),
            models=ModelRepository(repository, model_name),
        )
    except RecsysError as error:
        raise fail(error) from error
    typer.echo(
        f"release {release_id} is current: {model_version}, {embedding_version}, {index_version}"
    )


@release_app.command("status")
def status(releases: DirectoryOption = Path("var/releases")) -> None:
    """Print the current release and the history."""
    from recsys.release import ReleaseStore

    store = ReleaseStore(releases)
    current = store.current()
    for release in store.history():
        marker = "*" if current is not None and release.release_id == current.release_id else " "
        typer.echo(
            f"{marker} {release.release_id}  model {release.model_version}  embeddings "
            f"{release.embedding_version}  index {release.index_version}  "
            f"{release.created_at.isoformat(timespec='seconds')}"
        )
    if current is None:
        typer.echo("no current release")


@release_app.command("rollback")
def rollback(
    releases: DirectoryOption = Path("var/releases"),
    snapshots: SnapshotsOption = Path("var/snapshots"),
) -> None:
    """Make the previous release current again (its index too)."""
    from recsys.adapters.snapshots.local import LocalSnapshotStore
    from recsys.index.snapshots import SnapshotManager
    from recsys.release import ReleaseStore

    try:
        previous = ReleaseStore(releases).rollback(
            snapshots=SnapshotManager(LocalSnapshotStore(snapshots))
        )
    except RecsysError as error:
        raise fail(error) from error
    typer.echo(f"release {previous.release_id} is current again")
