"""`recsys eval`: train on a split, then measure these recommenders on the held-out part:

- popularity: the most interacted-with items of the training data;
- retrieval: the embeddings' top candidates (the ANN source alone);
- item neighbours: the neighbour source alone (the store `recsys train` built);
- EASE^R: Steck's closed form fitted on the training split (lambda: the one training chose on
  its validation split), the strongest simple baseline, always measured on the same split;
- candidate sources + ranking: every source merged, re-scored by the ranking model (ONNX
  Runtime);
- served: the same through a running deployment over gRPC (Recommend, diversity off): the
  embedded mode in this process, or the distributed layout of `recsys up` (10 shard
  processes, retrieve, rank, recommend).

Every row removes the user's training items and applies the same privacy filter the
Recommend service applies (`allowed_by_privacy`). The offline rows read the deployment's own
artifacts (shard snapshots, feature snapshot, exported model) through the serving code, and
every list follows one ordering rule (score, then item id), so the served row equals the
candidate sources + ranking row by construction; `parity` reports the share of users whose lists are
identical, and anything below 1.0 is a bug.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from recsys.adapters.features.in_memory import InMemoryFeatureStore
from recsys.data.catalogue import Catalogue
from recsys.deploy.sample import SampleDeployment, prepare_deployment
from recsys.domain.candidates import (
    CandidateMix,
    MergedCandidates,
    SourceKind,
    SourceList,
    merge_sources,
)
from recsys.domain.ordering import ranked_order, top_k_order
from recsys.domain.policies import privacy_filter
from recsys.domain.requests import RequestContext
from recsys.domain.scoring import CandidateScorer
from recsys.evaluation.metrics import TopKMetrics, evaluate_lists
from recsys.index.shard_index import ShardIndex
from recsys.ports.metadata import ItemMetadata, UserProfile
from recsys.similarity.fit import ease_weights
from recsys.similarity.neighbours import ItemNeighbours, load_neighbours
from recsys.training.candidates import HISTORY_LIMIT
from recsys.training.dataset import InteractionTable, leave_last_out, random_split
from recsys.training.models import EmbeddingSettings, RankerSettings
from recsys.training.pipeline import TrainedModels, train_models
from recsys.training.tuning import TuningGrid

logger = logging.getLogger(__name__)

IntArray = npt.NDArray[np.int64]


# The retrieval row's depth: the ANN source alone, its top k after the user's own items.
RETRIEVAL_ROW_DEPTH = 1000


class Protocol(enum.StrEnum):
    RANDOM = "random"  # per-user random 75/25
    LAST = "last"  # time-based leave-last-out


PROTOCOL_TITLES = {
    Protocol.RANDOM: "per-user random 75/25",
    Protocol.LAST: "time-based leave-last-out",
}


def split(
    table: InteractionTable, protocol: Protocol, seed: int
) -> tuple[InteractionTable, InteractionTable]:
    if protocol is Protocol.RANDOM:
        return random_split(table, train_ratio=0.75, seed=seed)
    return leave_last_out(table)


class OfflineRecommender:
    """The evaluation's own implementation of each row, from the deployment's artifacts, so
    that the served row must equal the candidate sources + ranking row by construction:

    - candidates: the deployment's shard snapshots searched in this process (the same FAISS
      indexes the shards load) and merged by the ordering rule (score, then item id);
    - ranking: the Rank service's `CandidateScorer` over the deployment's feature snapshot and
      the exported ONNX model, loaded as the ONNX ranker loads it;
    - every row: the user's training items removed, the Recommend service's privacy filter.
    """

    def __init__(
        self,
        catalogue: Catalogue,
        models: TrainedModels,
        *,
        shards: list[ShardIndex],
        features: InMemoryFeatureStore,
        scorer: CandidateScorer,
        mix: CandidateMix,
        neighbours: ItemNeighbours | None = None,
        history_limit: int = HISTORY_LIMIT,
    ) -> None:
        self.models = models
        self.mix = mix
        self.candidates = mix.retrieval
        self.neighbours = neighbours
        self.history_limit = history_limit
        self.shards = shards
        self.features = features
        self.scorer = scorer
        self.item_ids = models.table.item_ids
        self.metadata: dict[int, ItemMetadata] = {item.item_id: item for item in catalogue.items}
        self.profiles: dict[str, UserProfile] = {user.user_id: user for user in catalogue.users}
        self.seen_rows = models.table.items_by_user()
        self.seen = [set(self.item_ids[rows].tolist()) for rows in self.seen_rows]
        popularity = models.signals.popularity
        self.popular_ids = self.item_ids[ranked_order(self.item_ids, popularity)]

    @classmethod
    async def load(
        cls,
        catalogue: Catalogue,
        models: TrainedModels,
        deployment: SampleDeployment,
        candidates: int | None = None,
    ) -> OfflineRecommender:
        """`candidates`: retrieval's depth when not the deployment's (`recommend.candidates`)."""
        from recsys.adapters.rankers.onnx import OnnxRanker
        from recsys.adapters.snapshots.local import LocalSnapshotStore
        from recsys.data.features_file import load_features, load_into_store
        from recsys.domain.circuit_breaker import CircuitBreaker
        from recsys.domain.ranking import RankingChain
        from recsys.index.snapshots import Expectations, SnapshotManager
        from recsys.settings import load_settings

        settings = load_settings(**_merged(deployment.settings, evaluation_overrides(candidates)))
        snapshots = SnapshotManager(LocalSnapshotStore(settings.index.snapshot_dir))
        num_shards = settings.index.num_shards
        shards = [
            await asyncio.to_thread(
                snapshots.load, Expectations(shard_id=shard, num_shards=num_shards)
            )
            for shard in range(num_shards)
        ]
        features = InMemoryFeatureStore()
        assert settings.features.preload_path is not None
        await load_into_store(
            await asyncio.to_thread(load_features, settings.features.preload_path), features
        )
        ranker = await asyncio.to_thread(OnnxRanker.from_settings, settings)
        chain = RankingChain(
            ranker,
            breaker=CircuitBreaker("offline-ranking-model", failure_threshold=1_000_000),
            timeout_seconds=settings.rank.timeout_ms / 1000,
        )
        scorer = CandidateScorer(
            chain, features, feature_timeout_seconds=settings.rank.feature_timeout_ms / 1000
        )
        sources = settings.candidates
        neighbours = None
        if sources.neighbours_path is not None and sources.neighbours > 0:
            neighbours = await asyncio.to_thread(load_neighbours, sources.neighbours_path)
        mix = CandidateMix(
            retrieval=settings.recommend.candidates,
            neighbours=sources.neighbours if neighbours is not None else 0,
            popularity=sources.popularity,
        )
        return cls(
            catalogue,
            models,
            shards=shards,
            features=features,
            scorer=scorer,
            mix=mix,
            neighbours=neighbours,
            history_limit=sources.history_limit,
        )

    def _finish(self, user_row: int, item_ids: list[int], k: int) -> list[int]:
        seen = self.seen[user_row]
        unseen = [item for item in item_ids if item not in seen]
        profile = self.profiles.get(self.models.table.user_ids[user_row])
        allowed = privacy_filter(unseen, self.metadata, profile, "")
        return allowed[:k]

    async def popularity(self, user_row: int, k: int) -> list[int]:
        return self._finish(user_row, self.popular_ids.tolist(), k)

    async def _candidates(
        self, user_row: int, depth: int | None = None
    ) -> tuple[IntArray, npt.NDArray[np.float32]]:
        """Retrieval's candidates: the top of every shard for the user's served embedding,
        merged (the user's items included, as the Retrieve service answers)."""
        user = await self.features.get_user_features(self.models.table.user_ids[user_row])
        if user.embedding is None:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        query = user.embedding.vector.reshape(1, -1)
        depth = depth or self.candidates
        hits = [shard.search(query, depth)[0] for shard in self.shards]
        ids = np.concatenate([hit.item_ids for hit in hits])
        scores = np.concatenate([hit.scores for hit in hits])
        top = top_k_order(ids, scores, depth)
        return ids[top], scores[top]

    async def retrieval(self, user_row: int, k: int) -> list[int]:
        # Deep enough that a heavy user's own items leave k others (the ANN source alone).
        ids, _ = await self._candidates(user_row, max(self.candidates, RETRIEVAL_ROW_DEPTH))
        return self._finish(user_row, ids.tolist(), k)

    async def neighbour_list(self, user_row: int, k: int) -> list[int]:
        if self.neighbours is None:
            return []
        found = self.neighbours.top(self._history(user_row), k, history_limit=self.history_limit)
        return self._finish(user_row, found.item_ids.tolist(), k)

    def _history(self, user_row: int) -> IntArray:
        return self.item_ids[self.seen_rows[user_row]]

    async def merged(self, user_row: int) -> MergedCandidates:
        """Every source's candidates merged as the Recommend pipeline merges them: retrieval's
        top (the user's items included, as the index answers), the neighbours of the history,
        the most popular items; the history left out."""
        ids, scores = await self._candidates(user_row)
        lists = [SourceList(SourceKind.RETRIEVAL, ids, scores)]
        if self.neighbours is not None and self.mix.neighbours > 0:
            lists.append(
                self.neighbours.top(
                    self._history(user_row), self.mix.neighbours, history_limit=self.history_limit
                )
            )
        if self.mix.popularity > 0:
            lists.append(
                SourceList.of(SourceKind.POPULARITY, self.popular_ids[: self.mix.popularity])
            )
        return merge_sources(lists, excluded=np.fromiter(self.seen[user_row], np.int64))

    async def ranked(self, user_row: int, k: int) -> list[int]:
        pool = await self.merged(user_row)
        if not len(pool):
            return []
        scored = await self.scorer.score(
            self.models.table.user_ids[user_row],
            pool.item_ids,
            pool.score_of(SourceKind.RETRIEVAL),
            RequestContext(),
            sources=pool.columns,
            history_size=len(self.seen[user_row]),
        )
        return self._finish(user_row, scored.item_ids.tolist(), k)

    async def close(self) -> None:
        await self.scorer.chain.primary.close()


RANKED_ROW = "candidate sources + ranking"
EASE_ROW = "EASE^R"


class EaseBaseline:
    """EASE^R (Steck 2019) fitted on the training split with the lambda training chose (on its
    validation split when tuned): scores `x_u . B` over the whole catalogue, the user's items
    left out, then the same privacy filter as every row. Only while the catalogue is small
    enough for its dense inverse (`NeighbourSettings.ease_max_items`)."""

    def __init__(self, weights: npt.NDArray[np.float32], offline: OfflineRecommender) -> None:
        self.weights = weights
        self.offline = offline
        self.item_ids = offline.models.table.item_ids

    @classmethod
    def fit(cls, models: TrainedModels, offline: OfflineRecommender) -> EaseBaseline | None:
        settings = models.neighbour_settings
        if models.table.item_count > settings.ease_max_items:
            return None
        return cls(ease_weights(models.table.matrix(), settings.ease_lambda), offline)

    async def recommend(self, user_row: int, k: int) -> list[int]:
        seen = self.offline.seen_rows[user_row]
        scores = self.weights[seen].sum(axis=0, dtype=np.float64).astype(np.float32)
        scores[seen] = -np.inf
        head = top_k_order(self.item_ids, scores, k + 200)
        return self.offline._finish(user_row, self.item_ids[head].tolist(), k)


@dataclass
class ProtocolResult:
    protocol: Protocol
    rows: dict[str, TopKMetrics]
    parity: float | None  # share of users whose served list equals the offline ranked list
    degraded: int | None  # served answers with a degradation flag (each may explain a mismatch)
    train_pairs: int
    test_pairs: int
    seconds: dict[str, float] = field(default_factory=dict)
    # What training chose and measured (train_report.json's content: settings, tuning).
    training: dict[str, Any] = field(default_factory=dict)


def training_catalogue(catalogue: Catalogue, models: TrainedModels) -> Catalogue:
    """The catalogue as the deployment should know it: training interactions only, and item
    popularity from them, as training computed it (nothing held out leaks into serving)."""
    train = models.table
    pairs = {
        (train.user_ids[user], int(train.item_ids[item]))
        for user, item in zip(train.user_rows, train.item_rows, strict=True)
    }
    interactions = [
        event for event in catalogue.interactions if (event.user_id, event.item_id) in pairs
    ]
    popularity = models.signals.popularity
    row_of = {int(item): row for row, item in enumerate(train.item_ids)}
    items = [
        replace(item, popularity=float(popularity[row_of[item.item_id]]))
        if item.item_id in row_of
        else item
        for item in catalogue.items
    ]
    return replace(catalogue, items=items, interactions=interactions)


class Layout(enum.StrEnum):
    EMBEDDED = "embedded"  # one process (`recsys serve embedded`), in this process
    DISTRIBUTED = "distributed"  # `recsys up`: 10 shard processes, retrieve, rank, recommend


def served_row(layout: Layout) -> str:
    return f"served (gRPC, {layout.value})"


def evaluation_overrides(candidates: int | None = None) -> dict[str, dict[str, Any]]:
    """Offline parity: the ranked order as is, nobody throttled, budgets no call runs into
    (a timeout would degrade an answer and so change it). `candidates`: retrieval's depth when
    not the deployment's."""
    depth = {} if candidates is None else {"candidates": candidates}
    return {
        "candidates": {"neighbours_timeout_ms": 5_000},
        "recommend": {
            "diversity_enabled": False,
            "rate_limit_enabled": False,
            **depth,
            "feature_timeout_ms": 5_000,
            "cache_timeout_ms": 5_000,
            "metadata_timeout_ms": 5_000,
            "retrieve_timeout_ms": 10_000,
            "rank_timeout_ms": 10_000,
        },
        "retrieve": {"shard_timeout_ms": 10_000},
        "rank": {"feature_timeout_ms": 5_000, "timeout_ms": 5_000, "reload_poll_seconds": 0},
        "index": {"snapshot_poll_seconds": 0},
        "logging": {"access_log": False, "level": "WARNING"},
    }


def environment_of(overrides: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """Settings as RECSYS_SECTION__KEY variables (what `recsys up` passes its children)."""
    return {
        f"RECSYS_{section.upper()}__{key.upper()}": (
            str(value).lower() if isinstance(value, bool) else str(value)
        )
        for section, values in overrides.items()
        for key, value in values.items()
    }


async def _ask(
    target: str, users: list[str], k: int, progress: Callable[[str], None] | None
) -> tuple[dict[str, list[int]], int]:
    from recsys.v1.common_pb2 import RANKING_BACKEND_MODEL
    from recsys_client import AsyncRecsysClient, ClientOptions

    answers: dict[str, list[int]] = {}
    degraded = 0
    options = ClientOptions(target=target, timeout_seconds=30.0)
    async with AsyncRecsysClient(options) as client:
        for number, user in enumerate(users, start=1):
            response = await client.recommend(user, limit=k)
            answers[user] = [item.item_id for item in response.items]
            flags = response.degradation
            if any(flags.ListFields()) or response.ranking_backend != RANKING_BACKEND_MODEL:
                # Parity needs the undegraded path; say why a list may differ.
                degraded += 1
                logger.warning(
                    "served answer degraded",
                    extra={"user_id": user, "degradation": str(flags).replace("\n", " ")},
                )
            if progress and number % 200 == 0:
                progress(f"served path: {number}/{len(users)} users")
    return answers, degraded


def _merged(
    settings: Mapping[str, Mapping[str, Any]], overrides: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    merged: dict[str, Any] = {section: dict(values) for section, values in settings.items()}
    for section, values in overrides.items():
        merged[section] = {**merged.get(section, {}), **values}
    return merged


async def served_lists(
    deployment: SampleDeployment,
    users: list[str],
    *,
    k: int,
    candidates: int | None = None,
    layout: Layout = Layout.EMBEDDED,
    progress: Callable[[str], None] | None = None,
) -> tuple[dict[str, list[int]], int]:
    """Serves `deployment` (10 shards) in `layout` on loopback ports and asks Recommend for
    every user through the client library, one call at a time. Returns the lists and how many
    answers were degraded."""
    from recsys import services
    from recsys.settings import load_settings

    overrides = evaluation_overrides(candidates)
    if layout is Layout.DISTRIBUTED:
        return await _served_by_processes(deployment, overrides, users, k, progress)
    merged = _merged(
        {
            **deployment.settings,
            "server": {"host": "127.0.0.1", "port": 0, "shutdown_drain_seconds": 0.0},
            "metrics": {"enabled": False},
        },
        overrides,
    )
    settings = load_settings(**merged)
    application = await services.build_application(settings, ["embedded"])
    try:
        port = await application.start()
        return await _ask(f"127.0.0.1:{port}", users, k, progress)
    finally:
        await application.shutdown()


async def _served_by_processes(
    deployment: Any,
    overrides: dict[str, dict[str, Any]],
    users: list[str],
    k: int,
    progress: Callable[[str], None] | None,
) -> tuple[dict[str, list[int]], int]:
    """`recsys up` over the deployment's settings file, torn down afterwards."""
    import os
    import signal
    import subprocess
    import sys

    from recsys.deploy.ports import free_port_range
    from recsys.deploy.supervisor import RANK_OFFSET, RETRIEVE_OFFSET, layout_offsets
    from recsys_client import AsyncRecsysClient, ClientOptions, RecsysClientError

    num_shards = int(deployment.settings["index"]["num_shards"])
    servers = [*range(num_shards), RETRIEVE_OFFSET, RANK_OFFSET]
    base, (port,) = free_port_range(layout_offsets(num_shards), extra=1)
    environment = {
        **os.environ,
        **environment_of(overrides),
        "RECSYS_SERVER__HOST": "127.0.0.1",
        "RECSYS_SERVER__PORT": str(port),
        "RECSYS_SERVER__SHUTDOWN_DRAIN_SECONDS": "0",
    }
    logs = deployment.folder / "logs"
    command = [
        str(Path(sys.executable).with_name("recsys")),
        "up",
        "--config",
        str(deployment.settings_file),
        "--base-port",
        str(base),
        "--log-dir",
        str(logs),
    ]
    supervisor = await asyncio.to_thread(
        _start_process, command, environment, deployment.folder / "up.log"
    )
    try:
        addresses = [f"127.0.0.1:{base + offset}" for offset in servers] + [f"127.0.0.1:{port}"]
        if progress:
            progress(f"recsys up: waiting for {len(addresses)} processes")
        deadline = time.monotonic() + 180
        for address in addresses:
            async with AsyncRecsysClient(ClientOptions(target=address, retry=None)) as client:
                while True:
                    if supervisor.poll() is not None:
                        raise RuntimeError(f"recsys up exited; see {deployment.folder / 'up.log'}")
                    try:
                        if await client.check_health("readiness", timeout=1.0) == "SERVING":
                            break
                    except RecsysClientError:
                        pass
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{address} not serving after 180 s; logs in {logs}")
                    await asyncio.sleep(0.3)
        return await _ask(f"127.0.0.1:{port}", users, k, progress)
    finally:
        supervisor.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(supervisor.wait, 60)
        except subprocess.TimeoutExpired:
            # The supervisor leads its own process group: take its children down with it.
            os.killpg(supervisor.pid, signal.SIGKILL)
            await asyncio.to_thread(supervisor.wait)


def _start_process(command: list[str], environment: dict[str, str], log: Path) -> Any:
    import subprocess

    with open(log, "wb") as output:
        return subprocess.Popen(
            command,
            env=environment,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a process group to kill as one if it will not stop
        )


async def evaluate_protocol(
    catalogue: Catalogue,
    protocol: Protocol,
    *,
    k: int = 10,
    candidates: int | None = None,
    seed: int = 42,
    served: bool = True,
    embedding: EmbeddingSettings | None = None,
    ranker: RankerSettings | None = None,
    tune: bool = False,
    tuning_grid: TuningGrid | None = None,
    workdir: Path | None = None,
    layout: Layout = Layout.EMBEDDED,
    progress: Callable[[str], None] | None = None,
) -> ProtocolResult:
    """`candidates`: retrieval's depth instead of the trained mix's; `tune`: training chooses
    its settings on a validation split of the training part made by the same protocol (the
    test part is never seen)."""
    say = progress or (lambda message: None)
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    table = InteractionTable.from_catalogue(catalogue)
    train, test = split(table, protocol, seed)
    say(f"{protocol.value}: {len(train)} training pairs, {len(test)} held out; training")
    tune_split = functools.partial(split, protocol=protocol, seed=seed + 1) if tune else None
    models = await asyncio.to_thread(
        functools.partial(
            train_models,
            catalogue,
            train,
            embedding=embedding,
            ranker=ranker,
            tune_split=tune_split,
            tuning_grid=tuning_grid,
            step=say,
        )
    )
    seconds["train"] = round(time.perf_counter() - started, 2)
    with tempfile.TemporaryDirectory(prefix="recsys-eval-", dir=workdir) as folder:
        # Every row, offline and served, reads the same deployed artifacts.
        deployment = await prepare_deployment(
            training_catalogue(catalogue, models), models, Path(folder) / "deployment", progress=say
        )
        offline = await OfflineRecommender.load(catalogue, models, deployment, candidates)
        try:
            return await _measure(
                catalogue, protocol, models, test, offline, deployment,
                k=k, candidates=candidates, served=served, layout=layout, say=say,
                seconds=seconds,
            )  # fmt: skip
        finally:
            await offline.close()


async def _measure(
    catalogue: Catalogue,
    protocol: Protocol,
    models: TrainedModels,
    test: InteractionTable,
    offline: OfflineRecommender,
    deployment: SampleDeployment,
    *,
    k: int,
    candidates: int | None,
    served: bool,
    layout: Layout,
    say: Callable[[str], None],
    seconds: dict[str, float],
) -> ProtocolResult:
    train = models.table
    relevant: dict[str, set[int]] = {}
    for user_row, items in enumerate(test.items_by_user()):
        if len(items):
            relevant[train.user_ids[user_row]] = set(train.item_ids[items].tolist())
    user_rows = {user: row for row, user in enumerate(train.user_ids)}
    category_of = {item.item_id: item.all_categories for item in catalogue.items}

    def measure(lists: Mapping[str, list[int]]) -> TopKMetrics:
        return evaluate_lists(
            lists, relevant, category_of=category_of, catalogue_size=len(catalogue.items), k=k
        )

    rows: dict[str, TopKMetrics] = {}
    ranked: dict[str, list[int]] = {}
    methods: list[tuple[str, Callable[[int, int], Awaitable[list[int]]]]] = [
        ("popularity", offline.popularity),
        ("retrieval", offline.retrieval),
    ]
    if offline.neighbours is not None:
        methods.append(("item neighbours", offline.neighbour_list))
    ease = EaseBaseline.fit(models, offline)
    if ease is not None:
        methods.append((EASE_ROW, ease.recommend))
    methods.append((RANKED_ROW, offline.ranked))
    for name, method in methods:
        clock = time.perf_counter()
        lists = {user: await method(user_rows[user], k) for user in relevant}
        rows[name] = measure(lists)
        seconds[name] = round(time.perf_counter() - clock, 2)
        if name == RANKED_ROW:
            ranked = lists
    parity = degraded = None
    if served:
        clock = time.perf_counter()
        answers, degraded = await served_lists(
            deployment, list(relevant), k=k, candidates=candidates, layout=layout, progress=say
        )
        rows[served_row(layout)] = measure(answers)
        parity = sum(answers.get(user) == ranked[user] for user in relevant) / len(relevant)
        seconds[served_row(layout)] = round(time.perf_counter() - clock, 2)
    return ProtocolResult(
        protocol, rows, parity, degraded, len(train), len(test), seconds, models.report
    )


def markdown_table(results: list[ProtocolResult], *, k: int = 10) -> str:
    lines = [
        f"| protocol | recommender | P@{k} | R@{k} | NDCG@{k} | MAP@{k} | coverage | diversity |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        for name, metrics in result.rows.items():
            lines.append(
                f"| {PROTOCOL_TITLES[result.protocol]} | {name} | {metrics.precision:.4f} | "
                f"{metrics.recall:.4f} | {metrics.ndcg:.4f} | {metrics.map:.4f} | "
                f"{metrics.coverage:.4f} | {metrics.diversity:.4f} |"
            )
    return "\n".join(lines)
