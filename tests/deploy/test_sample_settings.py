"""The sample deployment's settings file: with a neighbour store, the candidate mix training
chose (Recommend and `recsys up`'s children read the same file)."""

from __future__ import annotations

from pathlib import Path

from recsys.deploy.sample import _toml, deployment_settings
from recsys.domain.candidates import CandidateMix
from recsys.settings import load_settings


def test_a_neighbour_store_brings_the_trained_mix(tmp_path: Path) -> None:
    store = tmp_path / "training" / "item_neighbours.npz"
    written = deployment_settings(
        tmp_path, 32, 4, neighbours_path=store, mix=CandidateMix(300, 120, 40)
    )
    config = tmp_path / "recsys.toml"
    config.write_text(_toml(written))
    settings = load_settings(config)
    assert settings.candidates.neighbours_path == store
    assert (settings.candidates.neighbours, settings.candidates.popularity) == (120, 40)
    assert settings.recommend.candidates == 300
    # The rest of the deployment's settings are unchanged by it.
    assert settings.recommend.metadata_timeout_ms == 250
    assert settings.index.num_shards == 4


def test_without_a_neighbour_store_retrieval_is_alone(tmp_path: Path) -> None:
    written = deployment_settings(tmp_path, 32, 4, mix=CandidateMix(300, 120, 40))
    assert "candidates" not in written
    config = tmp_path / "recsys.toml"
    config.write_text(_toml(written))
    settings = load_settings(config)
    assert settings.candidates.neighbours_path is None
    assert settings.candidates.popularity == 0
    assert settings.recommend.candidates == 1000
