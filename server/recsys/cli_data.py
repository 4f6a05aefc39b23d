"""`recsys data ...`: generate data sets (synthetic catalogues of any size)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Annotated

import typer

from recsys.cli_common import (
    ConfigOption,
    InteractionsOption,
    ItemsOption,
    MovieLensOption,
    SeedOption,
    UsersOption,
    catalogue_from,
    fail,
    settings_or_exit,
    stage_progress,
)
from recsys.data.synthetic import clustered_embeddings
from recsys.errors import RecsysError
from recsys.index.embeddings_file import ItemEmbeddings, save_embeddings

data_app = typer.Typer(help="Generate and load data sets.", no_args_is_help=True)


@data_app.command("embeddings")
def embeddings(
    output: Annotated[Path, typer.Option(help="Where to write: .npz or .parquet.")],
    items: Annotated[int, typer.Option(min=1, help="Number of items (ids 0..items-1).")] = 100_000,
    dimension: Annotated[int, typer.Option(min=1, max=4096, help="Vector dimension.")] = 64,
    clusters: Annotated[int, typer.Option(min=1, help="Taste clusters.")] = 256,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same data).")] = 0,
    embedding_version: Annotated[
        str, typer.Option(help="Embedding version to record.")
    ] = "emb-synthetic",
) -> None:
    """Write deterministic clustered item embeddings (unit vectors around taste centres)."""
    data = clustered_embeddings(items, dimension, clusters=clusters, seed=seed)
    save_embeddings(output, ItemEmbeddings(data.item_ids, data.vectors, embedding_version))
    typer.echo(f"wrote {items} x {dimension} embeddings ({embedding_version}) to {output}")


@data_app.command("load")
def load(
    config: ConfigOption = None,
    movielens: MovieLensOption = None,
    items: ItemsOption = 20_000,
    users: UsersOption = 5_000,
    interactions_per_user: InteractionsOption = 30,
    seed: SeedOption = 0,
    metadata_only: Annotated[
        bool,
        typer.Option(
            "--metadata-only",
            help="Only the SQL side; after `recsys train` the feature snapshot carries the "
            "item features (`recsys data features`).",
        ),
    ] = False,
) -> None:
    """Load a catalogue (MovieLens files or a synthetic one) into the configured SQL metadata
    store and feature store: items, users, interactions, item features. Erased users are left
    out."""
    from sqlalchemy.exc import SQLAlchemyError

    from recsys.data.catalogue import Skipped, load_catalogue
    from recsys.metadata.migrate import prepare_schema
    from recsys.registry import create_adapter

    settings = settings_or_exit(config, {})
    catalogue = catalogue_from(movielens, items, users, interactions_per_user, seed)

    async def run() -> Skipped:
        async with contextlib.AsyncExitStack() as stack:
            await asyncio.to_thread(prepare_schema, settings.database)
            metadata = create_adapter("metadata", settings.recommend.metadata, settings)
            stack.push_async_callback(metadata.close)
            features = None
            if not metadata_only:
                features = create_adapter("feature_store", settings.features.store, settings)
                stack.push_async_callback(features.close)
            totals = {
                "items": len(catalogue.items),
                "users": len(catalogue.users),
                "interactions": len(catalogue.interactions),
            }
            with stage_progress(totals) as progress:
                # Erased users' profiles and interactions are left out (their tombstones).
                return await load_catalogue(
                    catalogue, metadata=metadata, features=features, progress=progress
                )

    try:
        skipped = asyncio.run(run())
    except (RecsysError, SQLAlchemyError) as error:
        raise fail(error) from error
    typer.echo(
        f"loaded {len(catalogue.items)} items, {len(catalogue.users) - skipped.profiles} users "
        f"and {len(catalogue.interactions) - skipped.interactions} interactions "
        f"({settings.recommend.metadata} metadata"
        + ("" if metadata_only else f", {settings.features.store} feature store")
        + f"); {skipped.describe()}"
    )


@data_app.command("features")
def features(
    snapshot: Annotated[
        Path, typer.Argument(help="A feature snapshot (`recsys train` writes features.npz).")
    ],
    config: ConfigOption = None,
) -> None:
    """Load a feature snapshot (user embeddings, preferences, item features) into the
    configured feature store, leaving out the users erased in the configured metadata store.
    The store is then marked loaded, so the warm-up (features.restore_path) leaves it be."""
    from recsys.cli_train import load_features_into_store

    settings = settings_or_exit(config, {})
    if settings.features.store == "in_memory":
        typer.echo(
            "recsys: the in-memory feature store lives inside a serving process; serve with "
            f"features.preload_path = {snapshot} instead",
            err=True,
        )
        raise typer.Exit(code=2)
    from sqlalchemy.exc import SQLAlchemyError

    from recsys.adapters.redis.warmup import RedisLoadMarker
    from recsys.data.warmup import load_exclusively

    async def run() -> None:
        # Under the warm-up's lock (a restore in progress finishes first), then marked.
        marker = RedisLoadMarker.from_settings(settings)
        try:
            await load_exclusively(
                marker,
                snapshot,
                lambda: asyncio.to_thread(load_features_into_store, settings, snapshot),
                source="recsys data features",
                wait_seconds=600,
            )
        finally:
            await marker.close()

    try:
        asyncio.run(run())
    except (RecsysError, SQLAlchemyError) as error:
        raise fail(error) from error
