"""A small trained deployment (the sample deployment's layout: 300 synthetic items, 80 users,
2 shards, a release), built once per run and copied into each test's folder."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from recsys.data.catalogue import Catalogue
from recsys.deploy.sample import SETTINGS_FILE, prepare_deployment
from recsys.settings import RecsysSettings, load_settings

NUM_SHARDS = 2


@dataclass(frozen=True)
class Source:
    folder: Path
    catalogue: Catalogue
    index_version: str
    embedding_version: str

    @property
    def settings_file(self) -> Path:
        return self.folder / SETTINGS_FILE

    def settings(self) -> RecsysSettings:
        return load_settings(self.settings_file)


def _build(folder: Path) -> Source:
    from recsys.adapters.snapshots.local import LocalSnapshotStore
    from recsys.data.synthetic import synthetic_catalogue
    from recsys.index.snapshots import SnapshotManager
    from recsys.ranking.model_repository import ModelRepository
    from recsys.release import ReleaseManifest, ReleaseStore
    from recsys.training.dataset import InteractionTable
    from recsys.training.models import EmbeddingSettings, RankerSettings
    from recsys.training.pipeline import train_models

    catalogue = synthetic_catalogue(300, 80, interactions_per_user=10, seed=0)
    models = train_models(
        catalogue,
        InteractionTable.from_catalogue(catalogue),
        embedding=EmbeddingSettings(factors=16, iterations=5),
        ranker=RankerSettings(folds=1, trees=10),
    )
    deployment = asyncio.run(prepare_deployment(catalogue, models, folder, num_shards=NUM_SHARDS))
    releases = folder / "releases"
    ReleaseStore(releases).publish(
        ReleaseManifest(
            release_id="r-1",
            model_version=f"ranker:{deployment.artifacts.model_version}",
            embedding_version=models.embedding_version,
            index_version=deployment.index_version,
            num_shards=NUM_SHARDS,
            created_at=dt.datetime.now(dt.UTC),
        ),
        snapshots=SnapshotManager(LocalSnapshotStore(folder / "snapshots")),
        models=ModelRepository(folder / "models"),
    )
    settings_file = folder / SETTINGS_FILE
    settings_file.write_text(
        settings_file.read_text() + f'\n[release]\ndirectory = "{releases}"\n'
        "\n[backup]\nquality_users = 40\nsample_users = 5\n"
    )
    return Source(folder, catalogue, deployment.index_version, models.embedding_version)


@pytest.fixture(scope="session")
def built_source(tmp_path_factory: pytest.TempPathFactory) -> Source:
    return _build(tmp_path_factory.mktemp("backup-source") / "deployment")


def copy_source(source: Source, folder: Path) -> Source:
    """The deployment in `folder`, its settings file pointing there."""
    shutil.copytree(source.folder, folder)
    settings_file = folder / SETTINGS_FILE
    settings_file.write_text(settings_file.read_text().replace(str(source.folder), str(folder)))
    return Source(folder, source.catalogue, source.index_version, source.embedding_version)


@pytest.fixture
def source(built_source: Source, tmp_path: Path) -> Source:
    return copy_source(built_source, tmp_path / "source")


@pytest.fixture(autouse=True)
def _no_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The commands read RECSYS_*: a developer's own must not reach these deployments."""
    for name in list(os.environ):
        if name.upper().startswith("RECSYS_"):
            monkeypatch.delenv(name)
