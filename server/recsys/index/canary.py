"""The index quality canary: golden queries recorded when a shard is built, searched again
against the serving index, so a version that verifies (its manifest matches its files) but
answers wrongly (say, vectors shuffled between items) is caught and rolled back.

At build time a seeded sample of the shard's own item vectors is searched against the freshly
built shard; the queries, their top-k ids and scores go into `golden.json` beside the index
files (listed and checksummed in the manifest like them). `check_canary` searches the same
queries against a loaded shard and compares. Versions built before the canary carry no golden
file: they are reported as "no golden queries", never as failing.
"""

from __future__ import annotations

import logging
from collections.abc import Set
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, ValidationError

from recsys.errors import NotFound
from recsys.index.shard_index import ShardIndex
from recsys.index.snapshots import Expectations, SnapshotInvalid, SnapshotManager, sha256
from recsys.ports.shards import SearchHits

logger = logging.getLogger(__name__)

GOLDEN_FILE = "golden.json"
GOLDEN_QUERIES = 32
GOLDEN_K = 10
GOLDEN_SEED = 19
MIN_OVERLAP = 0.9
MAX_SCORE_DELTA = 1e-3
NO_GOLDEN = "no golden queries"


class _GoldenFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    format_version: int = 1
    k: int
    queries: list[list[float]]
    item_ids: list[list[int]]
    scores: list[list[float]]


@dataclass(frozen=True)
class GoldenQueries:
    """Query vectors and the hits the shard gave them when it was built."""

    k: int
    queries: npt.NDArray[np.float32]
    expected: tuple[SearchHits, ...]

    @property
    def query_count(self) -> int:
        return len(self.expected)

    def to_bytes(self) -> bytes:
        # JSON keeps float32 values exact (float32 -> float64 -> repr round-trips) and the
        # file byte-for-byte deterministic.
        golden = _GoldenFile(
            k=self.k,
            queries=self.queries.astype(np.float64).tolist(),
            item_ids=[hits.item_ids.tolist() for hits in self.expected],
            scores=[hits.scores.astype(np.float64).tolist() for hits in self.expected],
        )
        return golden.model_dump_json().encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> GoldenQueries:
        golden = _GoldenFile.model_validate_json(data)
        if not len(golden.queries) == len(golden.item_ids) == len(golden.scores):
            raise ValueError("golden queries, ids and scores differ in length")
        expected = []
        for ids, scores in zip(golden.item_ids, golden.scores, strict=True):
            if len(ids) != len(scores):
                raise ValueError("golden ids and scores differ in length")
            expected.append(
                SearchHits(np.asarray(ids, dtype=np.int64), np.asarray(scores, dtype=np.float32))
            )
        queries = np.asarray(golden.queries, dtype=np.float32)
        return cls(golden.k, queries.reshape(len(expected), -1), tuple(expected))


def record_golden(
    shard: ShardIndex,
    vectors: npt.NDArray[np.float32],
    *,
    count: int = GOLDEN_QUERIES,
    k: int = GOLDEN_K,
    seed: int = GOLDEN_SEED,
) -> GoldenQueries:
    """Samples `count` of the shard's item vectors (seeded per shard, so rebuilding the same
    data records the same queries) and records what the shard answers them."""
    rng = np.random.default_rng([seed, shard.shard_id])
    rows = np.sort(rng.choice(len(vectors), min(count, len(vectors)), replace=False))
    queries = np.ascontiguousarray(vectors[rows], dtype=np.float32)
    k = max(1, min(k, shard.item_count))
    hits = shard.search(queries, k) if len(queries) else []
    return GoldenQueries(k, queries, tuple(hits))


@dataclass(frozen=True)
class CanaryResult:
    query_count: int
    k: int
    mean_overlap: float
    max_score_delta: float
    # Empty when the check passed.
    reasons: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return not self.reasons

    @property
    def checked(self) -> bool:
        return self.query_count > 0

    def describe(self) -> str:
        if not self.checked:
            return NO_GOLDEN
        measured = (
            f"overlap@{self.k} {self.mean_overlap:.3f}, max score delta "
            f"{self.max_score_delta:.2g}, {self.query_count} queries"
        )
        return measured if self.passed else "; ".join(self.reasons) + f" ({measured})"


UNCHECKED = CanaryResult(query_count=0, k=0, mean_overlap=1.0, max_score_delta=0.0)


def check_canary(
    shard: ShardIndex,
    golden: GoldenQueries,
    *,
    min_overlap: float = MIN_OVERLAP,
    max_score_delta: float = MAX_SCORE_DELTA,
    changed_ids: Set[int] = frozenset(),
) -> CanaryResult:
    """Searches the golden queries and compares with the recorded hits.

    Overlap of one query: the share of its recorded top-k found again. Score delta: the largest
    difference between an item's recorded and current score, relative to max(1, |score|).
    Items in `changed_ids` (upserted or deleted since the version was loaded) are left out, and
    each of them now among the hits excuses one recorded hit from the tail (it was outranked):
    on an unchanged index this is exactly overlap@k."""
    if not golden.query_count:
        return UNCHECKED
    found = shard.search(golden.queries, golden.k)
    overlaps = []
    worst_delta = 0.0
    for expected, hits in zip(golden.expected, found, strict=True):
        current = dict(zip(hits.item_ids.tolist(), hits.scores.tolist(), strict=True))
        intruders = sum(item_id in changed_ids for item_id in current)
        recorded = [
            (item_id, score)
            for item_id, score in zip(
                expected.item_ids.tolist(), expected.scores.tolist(), strict=True
            )
            if item_id not in changed_ids
        ]
        wanted = recorded[: max(0, len(expected.item_ids) - intruders)]
        present = 0
        for item_id, score in wanted:
            if item_id in current:
                present += 1
                worst_delta = max(worst_delta, abs(current[item_id] - score) / max(1.0, abs(score)))
        overlaps.append(present / len(wanted) if wanted else 1.0)
    mean_overlap = float(np.mean(overlaps))
    reasons = []
    if mean_overlap < min_overlap:
        reasons.append(f"overlap@{golden.k} {mean_overlap:.3f} is below {min_overlap}")
    if worst_delta > max_score_delta:
        reasons.append(f"score delta {worst_delta:.2g} is above {max_score_delta}")
    return CanaryResult(
        query_count=golden.query_count,
        k=golden.k,
        mean_overlap=mean_overlap,
        max_score_delta=worst_delta,
        reasons=tuple(reasons),
    )


def load_golden(snapshots: SnapshotManager, shard_id: int, version: str) -> GoldenQueries | None:
    """The golden queries of a version; None when it was built without them."""
    manifest = snapshots.manifest(shard_id, version)
    digest = manifest.files.get(GOLDEN_FILE)
    if digest is None:
        return None
    try:
        data = snapshots.store.read_file(shard_id, version, GOLDEN_FILE)
    except FileNotFoundError as error:
        raise SnapshotInvalid(f"version {version}: file {GOLDEN_FILE} is missing") from error
    if sha256(data) != digest:
        raise SnapshotInvalid(f"version {version}: checksum mismatch in {GOLDEN_FILE}")
    try:
        return GoldenQueries.from_bytes(data)
    except (ValidationError, ValueError) as error:
        raise SnapshotInvalid(f"version {version}: unreadable {GOLDEN_FILE}: {error}") from error


def check_version(
    snapshots: SnapshotManager, shard: ShardIndex, *, changed_ids: Set[int] = frozenset()
) -> CanaryResult:
    """The canary of a loaded version against its own golden queries."""
    golden = load_golden(snapshots, shard.shard_id, shard.index_version)
    if golden is None:
        return UNCHECKED
    return check_canary(shard, golden, changed_ids=changed_ids)


@dataclass(frozen=True)
class GoodVersion:
    index_version: str
    shard: ShardIndex
    result: CanaryResult


def last_good_before(
    snapshots: SnapshotManager, expected: Expectations, failing: str
) -> GoodVersion | None:
    """The newest version built before `failing` that verifies and passes its own golden
    check (one without golden queries passes); None when there is none. Changes nothing."""
    ordered = snapshots.versions_newest_first(expected.shard_id)
    older = ordered[ordered.index(failing) + 1 :] if failing in ordered else ordered
    for version in older:
        try:
            _, shard = snapshots.verify(version, expected)
            result = check_version(snapshots, shard)
        except (SnapshotInvalid, NotFound) as error:
            logger.warning(
                "canary rollback skipped an invalid version",
                extra={"shard_id": expected.shard_id, "index_version": version, "reason": error},
            )
            continue
        if result.passed:
            return GoodVersion(version, shard, result)
        logger.warning(
            "canary rollback skipped a failing version",
            extra={
                "shard_id": expected.shard_id,
                "index_version": version,
                "reason": result.describe(),
            },
        )
    return None
