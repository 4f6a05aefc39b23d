"""The FAISS index of one shard: exactly the items with `item_id % num_shards == shard_id`.

Item ids are int64 FAISS labels. Flat and IVF indexes remove vectors in place (`remove_ids`);
HNSW cannot, so an HNSW shard keeps its own label table with tombstones: a deleted or replaced
vector is masked out of every search (an `IDSelectorBitmap` of live entries) and dropped for good
when the shard is compacted, which happens whenever it is written to a snapshot.

CPU-bound calls release the GIL inside FAISS; callers run them off the event loop. A
readers-writer lock lets searches run together but never during a modification.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
from typing import Any

import numpy as np
import numpy.typing as npt

from recsys.domain.ordering import top_k_order
from recsys.errors import FailedPrecondition, FieldViolation, InvalidArgument
from recsys.index.faiss_module import faiss
from recsys.index.quantizer import TRAINING_POINTS_PER_LIST, quantizer_id, train_shared_index
from recsys.index.rwlock import ReadWriteLock
from recsys.index.spec import IndexSpec, IndexType, Metric
from recsys.ports.shards import SearchHits

logger = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
LABELS_FILE = "labels.npy"
TRAINING_SEED = 1234

FloatArray = npt.NDArray[np.float32]
IdArray = npt.NDArray[np.int64]


def as_item_ids(values: Any, field: str = "item_ids") -> IdArray:
    ids = np.ascontiguousarray(values, dtype=np.int64).reshape(-1)
    if ids.size and ids.min() < 0:
        raise InvalidArgument([FieldViolation(field, "item ids must be non-negative")])
    return ids


def as_vectors(values: Any, dimension: int, field: str = "vectors") -> FloatArray:
    """A C-contiguous float32 matrix with `dimension` columns; finite values only."""
    array = np.asarray(values, dtype=np.float32)
    if array.ndim == 1:
        if array.size % dimension:
            raise InvalidArgument(
                [FieldViolation(field, f"length {array.size} is not a multiple of {dimension}")]
            )
        array = array.reshape(-1, dimension)
    if array.ndim != 2 or array.shape[1] != dimension:
        raise FailedPrecondition(
            f"vectors have dimension {array.shape[-1]}, the index has {dimension}",
            reason="DIMENSION_MISMATCH",
        )
    if not np.isfinite(array).all():
        raise InvalidArgument([FieldViolation(field, "vectors must hold finite numbers")])
    return np.ascontiguousarray(array)


def _tie_at_cut(distances: FloatArray, positions: IdArray, k: int) -> bool:
    """Whether some query's group of hits tied with its hit k may go on past the window: its
    last hit returned still has the k-th hit's distance."""
    if distances.shape[1] <= k:
        return False
    found = positions[:, -1] >= 0
    return bool(np.any(found & (distances[:, -1] == distances[:, k - 1])))


def _metric_type(metric: Metric) -> int:
    return int(faiss.METRIC_INNER_PRODUCT if metric is Metric.INNER_PRODUCT else faiss.METRIC_L2)


def new_faiss_index(spec: IndexSpec, item_count: int) -> Any:
    """An empty FAISS index for the spec (IVF ones still need training)."""
    metric = _metric_type(spec.metric)
    dimension = spec.dimension
    if spec.index_type is IndexType.FLAT:
        return faiss.IndexIDMap2(faiss.IndexFlat(dimension, metric))
    if spec.index_type is IndexType.HNSW:
        index = faiss.IndexHNSWFlat(dimension, spec.hnsw_m, metric)
        index.hnsw.efConstruction = spec.ef_construction
        return index
    nlist = spec.lists_for(item_count)
    quantizer = faiss.IndexFlat(dimension, metric)
    if spec.index_type is IndexType.IVF_FLAT:
        return faiss.IndexIVFFlat(quantizer, dimension, nlist, metric)
    return faiss.IndexIVFPQ(quantizer, dimension, nlist, spec.pq_m, spec.pq_nbits, metric)


class ShardIndex:
    """One shard's index plus its identity (versions, shard id, build time)."""

    def __init__(
        self,
        spec: IndexSpec,
        *,
        shard_id: int,
        num_shards: int,
        faiss_index: Any,
        index_version: str,
        embedding_version: str,
        built_at: dt.datetime,
        labels: IdArray | None = None,
    ) -> None:
        if not 0 <= shard_id < num_shards:
            raise ValueError(f"shard id {shard_id} is outside 0..{num_shards - 1}")
        self.spec = spec
        self.shard_id = shard_id
        self.num_shards = num_shards
        self.index_version = index_version
        self.embedding_version = embedding_version
        self.built_at = built_at
        self._index = faiss_index
        # The index searches run on: `_index` itself, or its GPU clone (see `use_gpu`).
        self._search_index = faiss_index
        self._gpu_device: int | None = None
        self._lock = ReadWriteLock()
        # HNSW only: FAISS position -> item id, live flags, and item id -> position.
        self._labels: IdArray = np.empty(0, dtype=np.int64)
        self._alive: npt.NDArray[np.bool_] = np.empty(0, dtype=bool)
        self._positions: dict[int, int] = {}
        if spec.index_type is IndexType.HNSW:
            if labels is None:
                labels = np.empty(0, dtype=np.int64)
            if len(labels) != faiss_index.ntotal:
                raise ValueError("HNSW labels do not match the index size")
            self._labels = labels.astype(np.int64, copy=True)
            self._alive = np.ones(len(labels), dtype=bool)
            self._positions = {int(label): position for position, label in enumerate(labels)}

    # ------------------------------------------------------------------ building

    @classmethod
    def empty(
        cls,
        spec: IndexSpec,
        *,
        shard_id: int,
        num_shards: int,
        embedding_version: str,
        index_version: str = "",
    ) -> ShardIndex:
        return cls(
            spec,
            shard_id=shard_id,
            num_shards=num_shards,
            faiss_index=new_faiss_index(spec, 0),
            index_version=index_version,
            embedding_version=embedding_version,
            built_at=dt.datetime.now(dt.UTC),
        )

    @classmethod
    def build(
        cls,
        spec: IndexSpec,
        *,
        shard_id: int,
        num_shards: int,
        item_ids: Any,
        vectors: Any,
        index_version: str,
        embedding_version: str,
        built_at: dt.datetime | None = None,
        trained_index: Any | None = None,
    ) -> ShardIndex:
        """Builds an index over the given items of this shard. IVF: `trained_index` is the
        build's shared quantizer (see `recsys.index.quantizer`), copied and filled with this
        shard's items; without one the shard trains its own on its items, which is the same
        thing for a single shard."""
        ids = as_item_ids(item_ids)
        matrix = as_vectors(vectors, spec.dimension)
        if len(ids) != len(matrix):
            raise InvalidArgument(
                [FieldViolation("vectors", f"{len(matrix)} vectors for {len(ids)} item ids")]
            )
        if trained_index is not None:
            index = faiss.clone_index(trained_index)
            if index.d != spec.dimension or not index.is_trained:
                raise ValueError("the shared index must be trained and of the spec's dimension")
        elif spec.is_ivf and len(ids):
            index = train_shared_index(spec, matrix)
        else:
            index = new_faiss_index(spec, len(ids))
        shard = cls(
            spec,
            shard_id=shard_id,
            num_shards=num_shards,
            faiss_index=index,
            index_version=index_version,
            embedding_version=embedding_version,
            built_at=built_at or dt.datetime.now(dt.UTC),
        )
        if len(ids):
            shard.upsert(ids, matrix)
        return shard

    # ------------------------------------------------------------------ reading

    @property
    def item_count(self) -> int:
        if self.spec.index_type is IndexType.HNSW:
            return len(self._positions)
        return int(self._index.ntotal)

    @property
    def faiss_index(self) -> Any:
        return self._index

    @property
    def quantizer_id(self) -> str | None:
        """Which coarse quantizer this IVF shard probes (None: not IVF, or untrained)."""
        return quantizer_id(self._index)

    @property
    def on_gpu(self) -> bool:
        return self._gpu_device is not None

    def use_gpu(self, device: int) -> bool:
        """Searches on a GPU clone from now on (flat and IVF; HNSW stays on the CPU). The CPU
        index stays the source of truth: every modification refreshes the clone, so GPU shards
        suit read-mostly serving. Returns whether the GPU is used."""
        if self.spec.index_type is IndexType.HNSW:
            logger.warning("HNSW indexes are searched on the CPU; FAISS has no GPU HNSW")
            return False
        if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() < 1:
            logger.warning("GPU requested but this FAISS build sees no GPU; searching on the CPU")
            return False
        with self._lock.writing():
            self._gpu_device = device
            self._refresh_gpu_clone()
        logger.info("index cloned to the GPU", extra={"gpu_device": device})
        return True

    def _refresh_gpu_clone(self) -> None:
        if self._gpu_device is None:
            return
        if not hasattr(self, "_gpu_resources"):
            self._gpu_resources = faiss.StandardGpuResources()
        self._search_index = faiss.index_cpu_to_gpu(
            self._gpu_resources, self._gpu_device, self._index
        )

    def search(
        self,
        queries: Any,
        k: int,
        *,
        nprobe: int | None = None,
        ef_search: int | None = None,
    ) -> list[SearchHits]:
        """Top-k items per query in rank order (score descending, then item id ascending);
        FAISS's -1 padding removed."""
        matrix = self._prepare(as_vectors(queries, self.spec.dimension, field="query_vectors"))
        with self._lock.reading():
            if self._index.ntotal == 0:
                empty = SearchHits(np.empty(0, np.int64), np.empty(0, np.float32))
                return [empty for _ in range(len(matrix))]
            parameters, keep_alive = self._search_parameters(nprobe, ef_search)
            # GPU FAISS returns at most 2,048 hits per query.
            total = int(self._index.ntotal) if not self.on_gpu else min(self._index.ntotal, 2048)
            # One hit more than asked: when it ties with the k-th, FAISS chose among tied items
            # by its own order, so ask deeper until the tie is inside the answer; the ordering
            # rule (score, then item id) then decides which tied items make the cut.
            depth = min(k + 1, total)
            while True:
                distances, positions = self._search_index.search(matrix, depth, params=parameters)
                if depth >= total or not _tie_at_cut(distances, positions, k):
                    break
                depth = min(depth * 2, total)
            del keep_alive
            labels = self._labels if self.spec.index_type is IndexType.HNSW else None
        if self.spec.metric is Metric.L2:
            distances = -distances  # higher is closer, whatever the metric
        hits = []
        for row_distances, row_positions in zip(distances, positions, strict=True):
            found = row_positions >= 0
            row_ids = row_positions[found]
            if labels is not None:
                row_ids = labels[row_ids]
            row_ids = row_ids.astype(np.int64)
            row_scores = row_distances[found].astype(np.float32)
            if len(row_scores) < 2 or bool(np.all(row_scores[:-1] > row_scores[1:])):
                # FAISS answers best first; with no ties that already is the rank order.
                hits.append(SearchHits(row_ids[:k], row_scores[:k]))
                continue
            keep = top_k_order(row_ids, row_scores, k)
            hits.append(SearchHits(row_ids[keep], row_scores[keep]))
        return hits

    def _search_parameters(self, nprobe: int | None, ef_search: int | None) -> tuple[Any, Any]:
        spec = self.spec
        if spec.is_ivf:
            return faiss.SearchParametersIVF(nprobe=nprobe or spec.nprobe), None
        if spec.index_type is IndexType.HNSW:
            parameters = faiss.SearchParametersHNSW(efSearch=ef_search or spec.ef_search)
            if not self._alive.all():
                # Live-entry mask; the packed array must outlive the search call.
                bitmap = np.packbits(self._alive, bitorder="little")
                selector = faiss.IDSelectorBitmap(len(self._alive), faiss.swig_ptr(bitmap))
                parameters.sel = selector
                return parameters, (bitmap, selector)
            return parameters, None
        return None, None

    def item_ids(self) -> IdArray:
        """Every item id held, in no particular order."""
        with self._lock.reading():
            if self.spec.index_type is IndexType.HNSW:
                return self._labels[self._alive].copy()
            if self.spec.index_type is IndexType.FLAT:
                ids: IdArray = faiss.vector_to_array(self._index.id_map).astype(np.int64)
                return ids
            invlists = faiss.extract_index_ivf(self._index).invlists
            chunks = []
            for list_number in range(invlists.nlist):
                size = invlists.list_size(list_number)
                if size:
                    pointer = invlists.get_ids(list_number)
                    chunks.append(faiss.rev_swig_ptr(pointer, size).copy())
                    invlists.release_ids(list_number, pointer)
            return np.concatenate(chunks) if chunks else np.empty(0, dtype=np.int64)

    # ------------------------------------------------------------------ writing

    def _prepare(self, matrix: FloatArray) -> FloatArray:
        if self.spec.normalize:
            matrix = matrix.copy()
            faiss.normalize_L2(matrix)
        return matrix

    def check_routing(self, ids: IdArray) -> None:
        foreign = ids[ids % self.num_shards != self.shard_id]
        if foreign.size:
            sample = ", ".join(str(item) for item in foreign[:5])
            raise FailedPrecondition(
                f"{foreign.size} item(s) belong to other shards (item_id % {self.num_shards} "
                f"!= {self.shard_id}), e.g. {sample}",
                reason="WRONG_SHARD",
            )

    def upsert(self, item_ids: Any, vectors: Any) -> int:
        """Inserts or replaces items; returns how many were written."""
        ids = as_item_ids(item_ids)
        matrix = as_vectors(vectors, self.spec.dimension)
        if len(ids) != len(matrix):
            raise InvalidArgument(
                [FieldViolation("vectors", f"{len(matrix)} vectors for {len(ids)} item ids")]
            )
        if len(np.unique(ids)) != len(ids):
            raise InvalidArgument([FieldViolation("item_ids", "item ids must be unique")])
        self.check_routing(ids)
        matrix = self._prepare(matrix)
        with self._lock.writing():
            if self.spec.index_type is IndexType.HNSW:
                self._upsert_hnsw(ids, matrix)
            else:
                if self.spec.is_ivf and not self._index.is_trained:
                    self._train(matrix)
                if self._index.ntotal:
                    self._index.remove_ids(faiss.IDSelectorBatch(ids))
                self._index.add_with_ids(matrix, ids)
                self._refresh_gpu_clone()
        return len(ids)

    def _train(self, matrix: FloatArray) -> None:
        ivf = faiss.extract_index_ivf(self._index)
        needed = self.spec.min_training_items(ivf.nlist)
        if len(matrix) < needed:
            raise FailedPrecondition(
                f"this {self.spec.index_type.value} index is untrained and needs at least "
                f"{needed} vectors to train; build a snapshot with `recsys index build` or "
                "upsert a larger first batch",
                reason="INDEX_UNTRAINED",
            )
        sample = matrix
        limit = ivf.nlist * TRAINING_POINTS_PER_LIST
        if len(matrix) > limit:
            rows = np.random.default_rng(TRAINING_SEED).choice(len(matrix), limit, replace=False)
            sample = matrix[np.sort(rows)]
        self._index.train(sample)

    def _upsert_hnsw(self, ids: IdArray, matrix: FloatArray) -> None:
        for item_id in ids.tolist():
            position = self._positions.pop(item_id, None)
            if position is not None:
                self._alive[position] = False
        start = int(self._index.ntotal)
        self._index.add(matrix)
        self._labels = np.concatenate([self._labels, ids])
        self._alive = np.concatenate([self._alive, np.ones(len(ids), dtype=bool)])
        for offset, item_id in enumerate(ids.tolist()):
            self._positions[item_id] = start + offset

    def delete(self, item_ids: Any) -> int:
        """Removes items; returns how many were present."""
        ids = as_item_ids(item_ids)
        with self._lock.writing():
            if self.spec.index_type is IndexType.HNSW:
                removed = 0
                for item_id in ids.tolist():
                    position = self._positions.pop(item_id, None)
                    if position is not None:
                        self._alive[position] = False
                        removed += 1
                return removed
            if not self._index.ntotal:
                return 0
            removed = int(self._index.remove_ids(faiss.IDSelectorBatch(ids)))
            if removed:
                self._refresh_gpu_clone()
            return removed

    # ------------------------------------------------------------------ persistence

    def compacted(self) -> ShardIndex:
        """This index without tombstones (HNSW: rebuilt from live vectors); self otherwise."""
        if self.spec.index_type is not IndexType.HNSW or self._alive.all():
            return self
        with self._lock.reading():
            live = np.flatnonzero(self._alive)
            vectors = self._index.reconstruct_n(0, self._index.ntotal)[live]
            labels = self._labels[live]
        index = new_faiss_index(self.spec, len(labels))
        index.add(np.ascontiguousarray(vectors))
        return ShardIndex(
            self.spec,
            shard_id=self.shard_id,
            num_shards=self.num_shards,
            faiss_index=index,
            index_version=self.index_version,
            embedding_version=self.embedding_version,
            built_at=self.built_at,
            labels=labels,
        )

    def to_files(self) -> dict[str, bytes]:
        """The snapshot files of this index (compacted first)."""
        source = self.compacted()
        with source._lock.reading():
            files = {INDEX_FILE: faiss.serialize_index(source._index).tobytes()}
            if self.spec.index_type is IndexType.HNSW:
                buffer = io.BytesIO()
                np.save(buffer, source._labels, allow_pickle=False)
                files[LABELS_FILE] = buffer.getvalue()
        return files

    @classmethod
    def from_files(
        cls,
        files: dict[str, bytes],
        spec: IndexSpec,
        *,
        shard_id: int,
        num_shards: int,
        index_version: str,
        embedding_version: str,
        built_at: dt.datetime,
    ) -> ShardIndex:
        index = faiss.deserialize_index(np.frombuffer(files[INDEX_FILE], dtype=np.uint8))
        labels = None
        if spec.index_type is IndexType.HNSW:
            labels = np.load(io.BytesIO(files[LABELS_FILE]), allow_pickle=False)
        if index.d != spec.dimension:
            raise FailedPrecondition(
                f"the index file has dimension {index.d}, the manifest says {spec.dimension}",
                reason="SNAPSHOT_INVALID",
            )
        return cls(
            spec,
            shard_id=shard_id,
            num_shards=num_shards,
            faiss_index=index,
            index_version=index_version,
            embedding_version=embedding_version,
            built_at=built_at,
            labels=labels,
        )
