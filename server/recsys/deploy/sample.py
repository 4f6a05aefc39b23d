"""A deployment of trained artifacts in one folder: model version, 10 shard snapshots, feature
snapshot, SQLite metadata (items, users, training interactions) and a settings file pointing
the embedded mode at them. `make run` (`recsys demo`) and `recsys eval` (the served path) use it.

    <folder>/training/     item_embeddings.npz, features.npz, train_report.json (and
                           item_neighbours.npz, the neighbour source's store, when trained)
    <folder>/models/ranker/<version>/   the ranking model (a Triton model repository)
    <folder>/snapshots/    one snapshot folder per shard
    <folder>/recsys.db     SQLite metadata
    <folder>/recsys.toml   settings for `recsys serve embedded --config`
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recsys.data.catalogue import Catalogue, load_catalogue
from recsys.domain.candidates import CandidateMix
from recsys.index.builder import build_shard_snapshots
from recsys.index.embeddings_file import load_embeddings
from recsys.index.snapshots import SnapshotManager
from recsys.index.spec import IndexSpec, IndexType, Metric
from recsys.training.pipeline import TrainedModels, TrainingArtifacts, write_artifacts

SETTINGS_FILE = "recsys.toml"


@dataclass(frozen=True)
class SampleDeployment:
    folder: Path
    artifacts: TrainingArtifacts
    index_version: str
    settings: dict[str, Any]

    @property
    def settings_file(self) -> Path:
        return self.folder / SETTINGS_FILE


def index_spec_for(dimension: int, items: int) -> IndexSpec:
    """Exact search while a shard is small (the evaluation must see exact top-k); IVF with
    unnormalised inner product (ALS scores) beyond."""
    index_type = IndexType.FLAT if items <= 200_000 else IndexType.IVF_FLAT
    return IndexSpec(
        dimension=dimension, index_type=index_type, metric=Metric.INNER_PRODUCT, normalize=False
    )


def deployment_settings(
    folder: Path,
    dimension: int,
    num_shards: int,
    *,
    neighbours_path: Path | None = None,
    mix: CandidateMix | None = None,
) -> dict[str, Any]:
    """With a neighbour store, its candidates and popularity's are merged with retrieval's in
    the mix training chose (the ranking model learnt on pools of that mix)."""
    settings: dict[str, Any] = {
        "index": {
            "num_shards": num_shards,
            "snapshot_dir": str(folder / "snapshots"),
            "spec": {"dimension": dimension, "normalize": False},
        },
        "rank": {"model_repository": str(folder / "models"), "model_name": "ranker"},
        "features": {"store": "in_memory", "preload_path": str(folder / "training/features.npz")},
        "database": {"url": f"sqlite+aiosqlite:///{folder / 'recsys.db'}"},
        # Embedded SQLite answers every query from one thread, beside FAISS and the model on
        # the same cores: the 50 ms budget of a database server would degrade answers here.
        "recommend": {"metadata_timeout_ms": 250},
    }
    if neighbours_path is not None:
        mix = mix or CandidateMix()
        settings["recommend"]["candidates"] = mix.retrieval
        settings["candidates"] = {
            "neighbours_path": str(neighbours_path),
            "neighbours": mix.neighbours,
            "popularity": mix.popularity,
        }
    return settings


def _toml(settings: dict[str, Any]) -> str:
    lines = ["# Written by the sample deployment (recsys.deploy.sample); edit freely."]
    for section, values in settings.items():
        lines.append(f"\n[{section}]")
        nested = {key: value for key, value in values.items() if isinstance(value, dict)}
        for key, value in values.items():
            if not isinstance(value, dict):
                lines.append(f"{key} = {_toml_value(value)}")
        for key, table in nested.items():
            lines.append(f"\n[{section}.{key}]")
            lines.extend(f"{name} = {_toml_value(value)}" for name, value in table.items())
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _write_files(
    models: TrainedModels, folder: Path, num_shards: int, say: Callable[[str], None]
) -> tuple[TrainingArtifacts, str, int]:
    """Artifacts and shard snapshots (blocking file and FAISS work, run in a thread)."""
    from recsys.adapters.snapshots.local import LocalSnapshotStore

    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    say("writing the model version, item embeddings and feature snapshot")
    artifacts = write_artifacts(
        models, output=folder / "training", model_repository=folder / "models"
    )
    embeddings = load_embeddings(artifacts.embeddings_path)
    index_version = "idx-" + models.embedding_version.removeprefix("als-")
    say(f"building {num_shards} shard snapshots ({len(embeddings.item_ids)} items)")
    build_shard_snapshots(
        embeddings,
        index_spec_for(embeddings.dimension, len(embeddings.item_ids) // num_shards),
        num_shards=num_shards,
        index_version=index_version,
        snapshots=SnapshotManager(LocalSnapshotStore(folder / "snapshots")),
    )
    return artifacts, index_version, embeddings.dimension


async def prepare_deployment(
    catalogue: Catalogue,
    models: TrainedModels,
    folder: Path,
    *,
    num_shards: int = 10,
    progress: Callable[[str], None] | None = None,
) -> SampleDeployment:
    """Writes everything a deployment of `models` needs under `folder` (emptied first).
    `catalogue.interactions` should be the training interactions: they become the history the
    served path excludes."""
    from recsys.adapters.sql.metadata import SqlMetadataRepository
    from recsys.metadata.migrate import prepare_schema
    from recsys.settings import load_settings

    say = progress or (lambda message: None)
    artifacts, index_version, dimension = await asyncio.to_thread(
        _write_files, models, folder, num_shards, say
    )
    settings = deployment_settings(
        folder,
        dimension,
        num_shards,
        # Without a neighbour store (not trained) retrieval serves alone.
        neighbours_path=artifacts.neighbours_path,
        mix=models.candidate_mix,
    )
    say(f"loading {len(catalogue.items)} items, {len(catalogue.users)} users into SQLite")
    loaded = load_settings(database=settings["database"])
    await asyncio.to_thread(prepare_schema, loaded.database)
    metadata = SqlMetadataRepository.from_settings(loaded)
    try:
        # The SQL side only: item features come from the feature snapshot at startup.
        await load_catalogue(catalogue, metadata=metadata, features=None)
    finally:
        await metadata.close()
    await asyncio.to_thread((folder / SETTINGS_FILE).write_text, _toml(settings))
    return SampleDeployment(folder, artifacts, index_version, settings)
