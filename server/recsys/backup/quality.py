"""The quality probe of a backup: NDCG@10 of the deployment's retrieval (user embedding against
the CURRENT shard indexes, exact top-k merged by the ordering rule) for a fixed, seeded sample of
users, relevance being the items of their interactions, scored by the evaluation's own metric
(`recsys.evaluation.metrics.evaluate_lists`).

It is measured when the backup is made and again on the restored data, for the same users: a
restore whose embeddings, index or interactions are missing, stale or misaligned scores lower.
It is in-sample (the embeddings were trained on these interactions), so it says whether the
restored deployment answers like the original, not how well the model generalises: that is the
held-out figure of `recsys eval`, which trains anew and is too slow for every restore.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import select

from recsys.domain.interactions import InteractionKind
from recsys.domain.ordering import top_k_order
from recsys.evaluation.metrics import evaluate_lists
from recsys.index.shard_index import ShardIndex
from recsys.metadata import tables
from recsys.metadata.database import create_migration_engine
from recsys.settings import DatabaseSettings

K = 10
SEED = 0


def sample_users(candidates: Iterable[str], count: int) -> list[str]:
    """`count` of the candidates, the same ones for the same candidates (seeded)."""
    ordered = sorted(set(candidates))
    if len(ordered) <= count:
        return ordered
    chosen = np.random.default_rng(SEED).choice(len(ordered), size=count, replace=False)
    return sorted(ordered[int(row)] for row in chosen)


def relevant_from_rows(rows: Iterable[Mapping[str, Any]], users: set[str]) -> dict[str, set[int]]:
    """The items each of `users` interacted with (skips are not interest)."""
    relevant: dict[str, set[int]] = {}
    for row in rows:
        if row["user_id"] in users and row["kind"] != InteractionKind.SKIP.value:
            relevant.setdefault(row["user_id"], set()).add(int(row["item_id"]))
    return relevant


def relevant_from_database(settings: DatabaseSettings, users: Sequence[str]) -> dict[str, set[int]]:
    interactions = tables.interactions
    engine = create_migration_engine(settings)
    try:
        with engine.connect() as connection:
            result = connection.execute(
                select(interactions.c.user_id, interactions.c.item_id, interactions.c.kind).where(
                    interactions.c.user_id.in_(list(users))
                )
            )
            return relevant_from_rows((dict(row._mapping) for row in result), set(users))
    finally:
        engine.dispose()


def retrieval_lists(
    shards: Sequence[ShardIndex], embeddings: Mapping[str, npt.NDArray[np.float32]], k: int = K
) -> dict[str, list[int]]:
    users = sorted(embeddings)
    if not users or not shards:
        return {}
    queries = np.stack([embeddings[user] for user in users]).astype(np.float32)
    per_shard = [shard.search(queries, k) for shard in shards]
    lists = {}
    for row, user in enumerate(users):
        ids = np.concatenate([hits[row].item_ids for hits in per_shard])
        scores = np.concatenate([hits[row].scores for hits in per_shard])
        lists[user] = ids[top_k_order(ids, scores, k)].tolist()
    return lists


def ndcg(
    shards: Sequence[ShardIndex],
    embeddings: Mapping[str, npt.NDArray[np.float32]],
    relevant: Mapping[str, set[int]],
    *,
    catalogue_size: int,
    k: int = K,
) -> float:
    """NDCG@k over the users with relevant items (a user without an embedding scores 0)."""
    if not any(relevant.values()):
        return 0.0
    lists = retrieval_lists(shards, embeddings, k)
    metrics = evaluate_lists(
        lists, dict(relevant), category_of={}, catalogue_size=max(catalogue_size, 1), k=k
    )
    return float(metrics.ndcg)
