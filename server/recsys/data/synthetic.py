"""Deterministic synthetic data for tests and benchmarks of any size.

Clustered embeddings model a catalogue whose items group by taste (genres): item vectors lie
around a few hundred centres, so approximate indexes behave as they do on real embeddings
(uniform random vectors would make every ANN index look bad and every recall test meaningless).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


def _normalize(matrix: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    normalized: npt.NDArray[np.float32] = (matrix / np.maximum(norms, 1e-12)).astype(np.float32)
    return normalized


@dataclass(frozen=True)
class ClusteredEmbeddings:
    item_ids: npt.NDArray[np.int64]
    vectors: npt.NDArray[np.float32]
    centres: npt.NDArray[np.float32]
    spread: float
    seed: int

    def queries(self, count: int, *, seed: int | None = None) -> npt.NDArray[np.float32]:
        """Query vectors drawn like users: near a random centre, unit length."""
        rng = np.random.default_rng(self.seed + 1 if seed is None else seed)
        chosen = self.centres[rng.integers(0, len(self.centres), count)]
        noise = rng.normal(scale=self.spread, size=chosen.shape).astype(np.float32)
        return _normalize(chosen + noise)


def clustered_embeddings(
    item_count: int,
    dimension: int,
    *,
    clusters: int = 256,
    spread: float = 0.35,
    seed: int = 0,
    chunk: int = 262_144,
) -> ClusteredEmbeddings:
    """`item_count` unit vectors around `clusters` random centres; item ids 0..item_count-1.

    Generated in chunks, so 10M x 64 needs only the output array (2.5 GB) in memory."""
    rng = np.random.default_rng(seed)
    centres = _normalize(rng.normal(size=(clusters, dimension)).astype(np.float32))
    scale = spread / np.sqrt(dimension)
    vectors = np.empty((item_count, dimension), dtype=np.float32)
    for start in range(0, item_count, chunk):
        stop = min(item_count, start + chunk)
        assignment = rng.integers(0, clusters, stop - start)
        noise = rng.normal(scale=scale, size=(stop - start, dimension)).astype(np.float32)
        vectors[start:stop] = _normalize(centres[assignment] + noise)
    return ClusteredEmbeddings(
        item_ids=np.arange(item_count, dtype=np.int64),
        vectors=vectors,
        centres=centres,
        spread=scale,
        seed=seed,
    )
