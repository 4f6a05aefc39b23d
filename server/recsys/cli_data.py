"""`recsys data ...`: generate data sets (synthetic catalogues of any size)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from recsys.data.synthetic import clustered_embeddings
from recsys.index.embeddings_file import ItemEmbeddings, save_embeddings

data_app = typer.Typer(help="Generate data sets.", no_args_is_help=True)


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
