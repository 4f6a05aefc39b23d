"""`recsys index build | info | verify | rollback` on real files."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from recsys.cli import app
from recsys.data.synthetic import clustered_embeddings
from recsys.index.embeddings_file import ItemEmbeddings, save_embeddings

runner = CliRunner()


def test_build_info_verify_rollback(tmp_path: Path) -> None:
    data = clustered_embeddings(2_000, 8, clusters=8)
    embeddings = tmp_path / "items.parquet"
    save_embeddings(embeddings, ItemEmbeddings(data.item_ids, data.vectors, "emb-3"))
    snapshots = tmp_path / "snapshots"
    for version in ("v1", "v2"):
        result = runner.invoke(
            app,
            ["index", "build", "--embeddings", str(embeddings), "--snapshots", str(snapshots),
             "--num-shards", "2", "--index-type", "hnsw", "--index-version", version],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        assert f"built {version}: 2000 items of dimension 8 in 2 shards" in result.output

    info = json.loads(runner.invoke(app, ["index", "info", "-s", str(snapshots)]).output)
    assert [shard["current"] for shard in info] == ["v2", "v2"]
    assert [v["index_version"] for v in info[0]["versions"]] == ["v2", "v1"]
    assert info[1]["versions"][0]["item_count"] == 1000
    assert info[1]["versions"][0]["embedding_version"] == "emb-3"

    verified = runner.invoke(app, ["index", "verify", "-s", str(snapshots)])
    assert verified.exit_code == 0, verified.output
    assert verified.output.count(" ok (1000 items)") == 2

    index_file = snapshots / "shard-001" / "versions" / "v2" / "index.faiss"
    index_file.write_bytes(b"garbage" + index_file.read_bytes()[7:])
    failed = runner.invoke(app, ["index", "verify", "-s", str(snapshots), "--quarantine"])
    assert failed.exit_code == 1
    assert "shard 1: v2 FAILED: version v2: checksum mismatch in index.faiss" in failed.output

    rolled = runner.invoke(app, ["index", "rollback", "-s", str(snapshots), "--shard", "0"])
    assert rolled.exit_code == 0, rolled.output
    assert "shard 0: CURRENT -> v1" in rolled.output


def test_build_refuses_a_missing_version(tmp_path: Path) -> None:
    import numpy as np

    np.save(tmp_path / "vectors.npy", np.ones((10, 4), np.float32))
    result = runner.invoke(
        app, ["index", "build", "--embeddings", str(tmp_path / "vectors.npy"), "-s", str(tmp_path)]
    )
    assert result.exit_code == 1
    assert "embedding version" in result.output
