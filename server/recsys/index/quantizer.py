"""One coarse quantizer for every shard of a build.

`recsys index build` trains the IVF centroids (and for IVF-PQ the product-quantizer codebooks)
once, on a seeded sample of the whole catalogue; every shard is then an empty copy of that
trained index holding its own items. The shards together search exactly like one index over
the catalogue at the same nprobe: the same lists, split by item id. Shards that each trained
their own, smaller set of lists align worse with the data and need a larger nprobe for the
same recall.

The quantizer id (a digest of the centroids and codebooks) goes into every shard's manifest,
so shards of different builds are recognised.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import numpy.typing as npt

from recsys.errors import FailedPrecondition
from recsys.index.faiss_module import faiss
from recsys.index.spec import IndexSpec

# FAISS advises 39 to 256 training points per list; more only slows k-means down.
TRAINING_POINTS_PER_LIST = 256
QUANTIZER_SEED = 1234
# Vectors normalised and handed to FAISS at a time: bounds the extra memory of a sample.
_SAMPLE_CHUNK = 262_144


def training_sample(
    vectors: npt.NDArray[np.float32],
    spec: IndexSpec,
    nlist: int,
    *,
    seed: int = QUANTIZER_SEED,
    points_per_list: int = TRAINING_POINTS_PER_LIST,
) -> npt.NDArray[np.float32]:
    """A seeded sample (rows in catalogue order) of at most `nlist * points_per_list` vectors,
    normalised when the spec says so."""
    limit = max(nlist * points_per_list, spec.min_training_items(nlist))
    if len(vectors) > limit:
        rows = np.sort(np.random.default_rng(seed).choice(len(vectors), limit, replace=False))
        sample = np.empty((limit, vectors.shape[1]), dtype=np.float32)
        for start in range(0, limit, _SAMPLE_CHUNK):
            sample[start : start + _SAMPLE_CHUNK] = vectors[rows[start : start + _SAMPLE_CHUNK]]
    else:
        sample = np.array(vectors, dtype=np.float32, order="C")
    if spec.normalize:
        faiss.normalize_L2(sample)
    return sample


def train_shared_index(
    spec: IndexSpec,
    vectors: npt.NDArray[np.float32],
    *,
    seed: int = QUANTIZER_SEED,
    points_per_list: int = TRAINING_POINTS_PER_LIST,
) -> Any:
    """A trained, empty IVF index for the whole catalogue `vectors`: every shard starts as a
    copy of it (`faiss.clone_index`). nlist follows `spec.lists_for(len(vectors))`."""
    from recsys.index.shard_index import new_faiss_index

    if not spec.is_ivf:
        raise ValueError(f"{spec.index_type.value} indexes have no coarse quantizer")
    template = new_faiss_index(spec, len(vectors))
    ivf = faiss.extract_index_ivf(template)
    needed = spec.min_training_items(ivf.nlist)
    if len(vectors) < needed:
        raise FailedPrecondition(
            f"a {spec.index_type.value} index with {ivf.nlist} lists needs at least {needed} "
            f"vectors to train, the catalogue has {len(vectors)}",
            reason="INDEX_UNTRAINED",
        )
    sample = training_sample(vectors, spec, ivf.nlist, seed=seed, points_per_list=points_per_list)
    # k-means seeds its own sampling and initialisation: the same sample gives the same lists.
    ivf.cp.seed = seed
    template.train(sample)
    return template


def quantizer_id(index: Any) -> str | None:
    """Digest of an IVF index's centroids (and PQ codebooks); None for other or untrained
    indexes. Equal ids: the shards probe the same lists for the same query."""
    try:
        # Downcast: extract_index_ivf answers the IndexIVF base class, without `pq`.
        ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    except RuntimeError:
        return None
    if not ivf.is_trained:
        return None
    digest = hashlib.sha256()
    digest.update(f"{type(ivf).__name__}:{ivf.d}:{ivf.nlist}:{ivf.metric_type}".encode())
    centroids = ivf.quantizer.reconstruct_n(0, ivf.nlist)
    digest.update(np.ascontiguousarray(centroids, dtype=np.float32).tobytes())
    product_quantizer = getattr(ivf, "pq", None)
    if product_quantizer is not None:
        digest.update(faiss.vector_to_array(product_quantizer.centroids).tobytes())
    return "q-" + digest.hexdigest()[:16]
