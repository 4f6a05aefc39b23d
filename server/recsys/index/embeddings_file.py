"""Item embedding files for `recsys index build`: `.npz`, `.npy` and Parquet.

- `.npz`: arrays `item_ids` (int64), `vectors` (float32, items x dimension) and optionally
  `embedding_version` (a 0-d string array).
- `.npy`: the vectors alone; item ids from `--item-ids FILE.npy` (or 0..n-1).
- Parquet: columns `item_id` (int64) and `vector` (list or fixed-size list of float32); the
  embedding version in the schema metadata key `embedding_version`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

from recsys.errors import ConfigurationError

VERSION_KEY = "embedding_version"


@dataclass(frozen=True)
class ItemEmbeddings:
    item_ids: npt.NDArray[np.int64]
    vectors: npt.NDArray[np.float32]
    embedding_version: str

    @property
    def dimension(self) -> int:
        return int(self.vectors.shape[1])


def load_embeddings(
    path: Path,
    *,
    item_ids_path: Path | None = None,
    embedding_version: str | None = None,
) -> ItemEmbeddings:
    """Reads an embeddings file; `embedding_version` overrides the file's own."""
    suffix = path.suffix.lower()
    file_version: str | None = None
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            ids = archive["item_ids"]
            vectors = archive["vectors"]
            if VERSION_KEY in archive:
                file_version = str(archive[VERSION_KEY])
    elif suffix == ".npy":
        vectors = np.load(path, allow_pickle=False)
        ids = (
            np.load(item_ids_path, allow_pickle=False)
            if item_ids_path is not None
            else np.arange(len(vectors))
        )
    elif suffix == ".parquet":
        table = pq.read_table(path, columns=["item_id", "vector"])
        ids = table.column("item_id").to_numpy()
        column = table.column("vector").combine_chunks()
        flat = column.flatten().to_numpy(zero_copy_only=False)
        vectors = flat.reshape(len(ids), -1) if len(ids) else flat.reshape(0, 0)
        metadata = table.schema.metadata or {}
        if VERSION_KEY.encode() in metadata:
            file_version = metadata[VERSION_KEY.encode()].decode()
    else:
        raise ConfigurationError(f"{path}: expected a .npz, .npy or .parquet embeddings file")
    version = embedding_version or file_version
    if not version:
        raise ConfigurationError(f"{path} names no embedding version; pass --embedding-version")
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(ids) != len(vectors):
        raise ConfigurationError(
            f"{path}: {len(ids)} item ids for vectors of shape {vectors.shape}"
        )
    return ItemEmbeddings(ids, vectors, version)


def save_embeddings(path: Path, embeddings: ItemEmbeddings) -> None:
    """Writes `.npz` or Parquet (by the path's suffix)."""
    suffix = path.suffix.lower()
    if suffix == ".npz":
        np.savez(
            path,
            item_ids=embeddings.item_ids,
            vectors=embeddings.vectors,
            embedding_version=np.array(embeddings.embedding_version),
        )
    elif suffix == ".parquet":
        dimension = embeddings.dimension
        vectors = pa.FixedSizeListArray.from_arrays(
            pa.array(embeddings.vectors.reshape(-1), type=pa.float32()), dimension
        )
        table = pa.table({"item_id": pa.array(embeddings.item_ids), "vector": vectors})
        table = table.replace_schema_metadata({VERSION_KEY: embeddings.embedding_version})
        pq.write_table(table, path)
    else:
        raise ConfigurationError(f"{path}: write .npz or .parquet")
