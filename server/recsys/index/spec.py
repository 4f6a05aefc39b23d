"""What kind of FAISS index a shard holds, and its search parameters."""

from __future__ import annotations

import enum
import math

from pydantic import BaseModel, ConfigDict, Field, model_validator


class IndexType(enum.StrEnum):
    FLAT = "flat"
    IVF_FLAT = "ivf_flat"
    IVF_PQ = "ivf_pq"
    HNSW = "hnsw"


class Metric(enum.StrEnum):
    # Inner product; with `normalize` (the default) it is cosine similarity.
    INNER_PRODUCT = "inner_product"
    L2 = "l2"


MAX_NPROBE = 4096
MAX_EF_SEARCH = 4096


class IndexSpec(BaseModel):
    """Index type, metric and parameters; stored in every snapshot manifest."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dimension: int = Field(ge=1, le=4096)
    index_type: IndexType = IndexType.IVF_FLAT
    metric: Metric = Metric.INNER_PRODUCT
    # Inner product on L2-normalised vectors (items at build/upsert, queries at search).
    normalize: bool = True
    # IVF: number of inverted lists; 0 chooses about sqrt(items) at build time.
    nlist: int = Field(default=0, ge=0, le=1 << 20)
    # IVF-PQ: sub-quantizers (must divide the dimension) and bits per code.
    pq_m: int = Field(default=8, ge=1)
    pq_nbits: int = Field(default=8, ge=4, le=12)
    # HNSW: graph degree and construction breadth.
    hnsw_m: int = Field(default=32, ge=4, le=256)
    ef_construction: int = Field(default=200, ge=8, le=4096)
    # Default search parameters; requests may override them within the bounds.
    nprobe: int = Field(default=16, ge=1, le=MAX_NPROBE)
    ef_search: int = Field(default=128, ge=1, le=MAX_EF_SEARCH)

    @model_validator(mode="after")
    def _check(self) -> IndexSpec:
        if self.index_type is IndexType.IVF_PQ and self.dimension % self.pq_m:
            raise ValueError(
                f"pq_m={self.pq_m} must divide the dimension {self.dimension} for ivf_pq"
            )
        if self.normalize and self.metric is Metric.L2:
            raise ValueError("normalize applies to the inner_product metric only")
        return self

    @property
    def is_ivf(self) -> bool:
        return self.index_type in (IndexType.IVF_FLAT, IndexType.IVF_PQ)

    def lists_for(self, item_count: int) -> int:
        """Number of IVF lists for a shard of `item_count` items."""
        if self.nlist:
            return self.nlist
        # About sqrt(n) lists, and at least 39 training points per list (FAISS's advice).
        return max(1, min(round(math.sqrt(item_count)), item_count // 39))

    def min_training_items(self, nlist: int) -> int:
        """Items needed to train an IVF index with `nlist` lists."""
        needed = nlist
        if self.index_type is IndexType.IVF_PQ:
            needed = max(needed, 1 << self.pq_nbits)
        return needed
