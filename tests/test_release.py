"""Release manifests: publishing refuses a combination that does not fit, services serve
exactly the current release, rollback returns to the previous one."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from typer.testing import CliRunner

from recsys.adapters.snapshots.local import LocalSnapshotStore
from recsys.cli import app
from recsys.composition import Components
from recsys.data.synthetic import clustered_embeddings
from recsys.errors import NotFound
from recsys.index.builder import build_shard_snapshots
from recsys.index.embeddings_file import ItemEmbeddings
from recsys.index.snapshots import SnapshotManager
from recsys.index.spec import IndexSpec, IndexType
from recsys.ranking.model_repository import ModelRepository
from recsys.ranking.reference_model import write_reference_version
from recsys.release import ReleaseManifest, ReleaseMismatch, ReleaseStore
from tests.conftest import make_settings

runner = CliRunner()


@pytest.fixture
def world(tmp_path: Path) -> tuple[SnapshotManager, ModelRepository, Path]:
    snapshots = SnapshotManager(LocalSnapshotStore(tmp_path / "snapshots"), keep_versions=5)
    spec = IndexSpec(dimension=8, index_type=IndexType.FLAT)
    for embedding_version, index_version in (("e1", "idx-1"), ("e2", "idx-2")):
        data = clustered_embeddings(400, 8, seed=int(embedding_version[1]))
        build_shard_snapshots(
            ItemEmbeddings(data.item_ids, data.vectors, embedding_version), spec,
            num_shards=2, index_version=index_version, snapshots=snapshots,
        )  # fmt: skip
    models = ModelRepository(tmp_path / "models")
    write_reference_version(models.model_folder, "1")
    write_reference_version(models.model_folder, "2")
    return snapshots, models, tmp_path / "releases"


def manifest(release_id: str, embedding: str, index: str, model: str = "ranker:1", minute: int = 0):  # type: ignore[no-untyped-def]
    return ReleaseManifest(
        release_id=release_id, model_version=model, embedding_version=embedding,
        index_version=index, num_shards=2,
        created_at=dt.datetime(2026, 11, 29, 12, minute, tzinfo=dt.UTC),
    )  # fmt: skip


def test_a_mismatched_index_is_refused(world) -> None:  # type: ignore[no-untyped-def]
    snapshots, models, directory = world
    store = ReleaseStore(directory)
    with pytest.raises(ReleaseMismatch, match="built from embeddings e1, the release says e2"):
        store.publish(manifest("r1", "e2", "idx-1"), snapshots=snapshots, models=models)
    with pytest.raises(ReleaseMismatch, match="ranker:9"):
        store.publish(
            manifest("r1", "e1", "idx-1", model="ranker:9"), snapshots=snapshots, models=models
        )
    with pytest.raises(ReleaseMismatch, match="idx-404"):
        store.publish(manifest("r1", "e1", "idx-404"), snapshots=snapshots, models=models)
    assert store.current() is None


def test_publish_activates_and_rollback_returns(world) -> None:  # type: ignore[no-untyped-def]
    snapshots, models, directory = world
    store = ReleaseStore(directory)
    store.publish(manifest("r1", "e1", "idx-1"), snapshots=snapshots, models=models)
    store.publish(
        manifest("r2", "e2", "idx-2", "ranker:2", minute=5), snapshots=snapshots, models=models
    )
    current = store.current()
    assert current is not None
    assert current.release_id == "r2"
    assert [snapshots.store.current(s) for s in (0, 1)] == ["idx-2", "idx-2"]
    previous = store.rollback(snapshots=snapshots)
    assert previous.release_id == "r1"
    assert [snapshots.store.current(s) for s in (0, 1)] == ["idx-1", "idx-1"]


async def test_shards_and_ranker_serve_exactly_the_release(world, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from recsys.adapters.rankers.onnx import OnnxRanker
    from recsys.adapters.rankers.triton import TritonRanker

    snapshots, models, directory = world
    store = ReleaseStore(directory)
    store.publish(manifest("r1", "e1", "idx-1"), snapshots=snapshots, models=models)
    settings = make_settings(
        tmp_path,
        index={"num_shards": 2, "spec": {"dimension": 8, "index_type": "flat"},
               "snapshot_dir": str(snapshots.store.root)},  # type: ignore[attr-defined]
        rank={"model_repository": str(models.root)},
        release={"directory": str(directory)},
    )  # fmt: skip
    # The process resolves the release once; what it builds follows it.
    components = Components(settings)
    async with components.resources:
        host = components.shard_host(0)
        await host.start()
        assert (host.current.index_version, host.current.embedding_version) == ("idx-1", "e1")
        ranker = components.ranker("onnx")
        assert isinstance(ranker, OnnxRanker)
        assert ranker.model_version == "ranker:1"  # not the newer version 2: the release decides
        assert not await ranker.reload()
        triton = components.ranker("triton")
        assert isinstance(triton, TritonRanker)
        # The inference server is asked for the release's version, not its latest.
        assert triton.requested_version == "1"
    # Someone points CURRENT at the e2 index behind the release's back: the shard refuses it.
    snapshots.store.set_current(0, "idx-2")
    fresh_components = Components(settings)
    async with fresh_components.resources:
        fresh = fresh_components.shard_host(0)
        await fresh.start()
        assert fresh.current.index_version == "idx-1"  # fell back to the last version that fits
    assert "idx-2" in snapshots.store.list_versions(0)  # intact: refused, not quarantined


def test_services_need_a_current_release_when_configured(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, release={"directory": str(tmp_path / "empty")})
    with pytest.raises(NotFound):
        Components(settings)


def test_release_cli(world) -> None:  # type: ignore[no-untyped-def]
    snapshots, models, directory = world
    common = ["--releases", str(directory), "--snapshots", str(snapshots.store.root)]  # type: ignore[attr-defined]
    refused = runner.invoke(
        app,
        ["release", "publish", "r1", "--model-version", "ranker:1", "--embedding-version", "e2",
         "--index-version", "idx-1", "--num-shards", "2", "--repository", str(models.root),
         *common],
    )  # fmt: skip
    assert refused.exit_code == 1
    assert "does not fit" in refused.output
    published = runner.invoke(
        app,
        ["release", "publish", "r1", "--model-version", "ranker:1", "--embedding-version", "e1",
         "--index-version", "idx-1", "--num-shards", "2", "--repository", str(models.root),
         *common],
    )  # fmt: skip
    assert published.exit_code == 0, published.output
    status = runner.invoke(app, ["release", "status", "--releases", str(directory)])
    assert "* r1  model ranker:1  embeddings e1  index idx-1" in status.output
