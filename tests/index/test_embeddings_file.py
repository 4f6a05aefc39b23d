"""Embedding files: .npz, .parquet and .npy round trips, and clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recsys.errors import ConfigurationError
from recsys.index.embeddings_file import ItemEmbeddings, load_embeddings, save_embeddings


@pytest.fixture
def embeddings() -> ItemEmbeddings:
    rng = np.random.default_rng(0)
    return ItemEmbeddings(
        np.array([5, 17, 3], dtype=np.int64), rng.normal(size=(3, 8)).astype(np.float32), "e-9"
    )


@pytest.mark.parametrize("suffix", [".npz", ".parquet"])
def test_round_trip(tmp_path: Path, embeddings: ItemEmbeddings, suffix: str) -> None:
    path = tmp_path / f"items{suffix}"
    save_embeddings(path, embeddings)
    loaded = load_embeddings(path)
    assert loaded.embedding_version == "e-9"
    np.testing.assert_array_equal(loaded.item_ids, embeddings.item_ids)
    np.testing.assert_array_equal(loaded.vectors, embeddings.vectors)
    assert load_embeddings(path, embedding_version="override").embedding_version == "override"


def test_npy_with_item_ids(tmp_path: Path, embeddings: ItemEmbeddings) -> None:
    np.save(tmp_path / "vectors.npy", embeddings.vectors)
    np.save(tmp_path / "ids.npy", embeddings.item_ids)
    loaded = load_embeddings(
        tmp_path / "vectors.npy", item_ids_path=tmp_path / "ids.npy", embedding_version="v"
    )
    assert loaded.item_ids.tolist() == [5, 17, 3]
    with pytest.raises(ConfigurationError, match="embedding version"):
        load_embeddings(tmp_path / "vectors.npy")


def test_unknown_format(tmp_path: Path) -> None:
    (tmp_path / "x.csv").write_text("1,2")
    with pytest.raises(ConfigurationError, match=r"\.npz"):
        load_embeddings(tmp_path / "x.csv", embedding_version="v")
