"""Settings: sources, priorities and validation at startup."""

from __future__ import annotations

import traceback
from pathlib import Path

import pytest
from typer.testing import CliRunner

from recsys.cli import app
from recsys.domain.candidates import CandidateMix
from recsys.errors import ConfigurationError
from recsys.settings import load_settings


def test_defaults_are_the_embedded_mode_on_50051() -> None:
    settings = load_settings()
    assert settings.mode == "embedded"
    assert (settings.server.host, settings.server.port) == ("127.0.0.1", 50051)


def test_environment_overrides_file_and_file_overrides_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "recsys.toml"
    config.write_text(
        'mode = "distributed"\n[server]\nport = 6000\ndefault_deadline_ms = 250\n'
        '[recommend]\nsurfaces = ["homepage", "tv_row"]\n'
    )
    monkeypatch.setenv("RECSYS_SERVER__PORT", "7000")
    settings = load_settings(config)
    assert settings.mode == "distributed"
    assert settings.server.port == 7000
    assert settings.server.default_deadline_ms == 250
    assert settings.recommend.surfaces == ("homepage", "tv_row")


def test_config_file_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "recsys.toml"
    config.write_text("[metrics]\nport = 9999\n")
    monkeypatch.setenv("RECSYS_CONFIG_FILE", str(config))
    assert load_settings().metrics.port == 9999


def test_explicit_overrides_win_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSYS_SERVER__HOST", "0.0.0.0")
    settings = load_settings(server={"port": 1234})
    assert (settings.server.host, settings.server.port) == ("0.0.0.0", 1234)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("RECSYS_SERVER__PORTT", "1", "RECSYS_SERVER__PORTT"),
        ("RECSYS_NOPE", "1", "RECSYS_NOPE"),
        ("RECSYS_MODE__X", "1", "RECSYS_MODE__X"),
        ("RECSYS_SERVER__PORT", "70000", "server.port"),
        ("RECSYS_MODE", "cluster", "mode"),
        ("RECSYS_RECOMMEND__SURFACES", '["Home Page"]', "surface"),
    ],
)
def test_bad_environment_fails_at_startup(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError, match=message):
        load_settings()


def test_unknown_keys_in_the_file_are_refused(tmp_path: Path) -> None:
    config = tmp_path / "recsys.toml"
    config.write_text("[server]\nprot = 1\n")
    with pytest.raises(ConfigurationError, match="prot"):
        load_settings(config)


def test_missing_config_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="does not exist"):
        load_settings(tmp_path / "absent.toml")


def test_metrics_and_grpc_ports_must_differ() -> None:
    with pytest.raises(ConfigurationError, match=r"metrics\.port"):
        load_settings(server={"port": 9000}, metrics={"port": 9000})


def test_a_feature_preload_is_for_the_in_memory_store() -> None:
    assert load_settings(features={"preload_path": "var/features.npz"}).features.preload_path
    with pytest.raises(ConfigurationError, match=r"features\.preload_path is for the in_memory"):
        load_settings(features={"store": "redis", "preload_path": "var/features.npz"})


def test_a_feature_restore_is_for_a_shared_store() -> None:
    features = load_settings(features={"store": "redis", "restore_path": "f.npz"}).features
    assert features.restore_path is not None
    assert features.restore_check_seconds == 5.0
    with pytest.raises(ConfigurationError, match=r"features\.restore_path is for a shared"):
        load_settings(features={"restore_path": "var/features.npz"})
    with pytest.raises(ConfigurationError, match=r"restore_check_seconds"):
        load_settings(features={"store": "redis", "restore_check_seconds": 0})


def test_one_nested_field_from_the_environment_keeps_its_siblings_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    defaults = load_settings()
    monkeypatch.setenv("RECSYS_INDEX__SPEC__NORMALIZE", "false")
    monkeypatch.setenv("RECSYS_SERVER__DEFAULT_DEADLINE_MS", "250")
    monkeypatch.setenv("RECSYS_RANK__TIMEOUT_MS", "40")
    settings = load_settings()
    assert settings.index.spec.normalize is False
    assert settings.index.spec == defaults.index.spec.model_copy(update={"normalize": False})
    assert settings.index.spec.dimension == 64
    assert settings.index == defaults.index.model_copy(update={"spec": settings.index.spec})
    assert settings.server.default_deadline_ms == 250
    assert settings.server == defaults.server.model_copy(update={"default_deadline_ms": 250})
    assert settings.rank.timeout_ms == 40
    assert settings.rank == defaults.rank.model_copy(update={"timeout_ms": 40})


def test_one_nested_field_from_the_file_keeps_its_siblings_defaults(tmp_path: Path) -> None:
    config = tmp_path / "recsys.toml"
    config.write_text('[index.spec]\nindex_type = "flat"\n')
    settings = load_settings(config)
    assert settings.index.spec.index_type == "flat"
    assert settings.index.spec.dimension == 64
    assert settings.index.spec.normalize is True
    assert settings.index.num_shards == 10


def test_sources_merge_field_by_field_in_a_nested_section(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "recsys.toml"
    config.write_text("[index.spec]\nnlist = 7\n")
    monkeypatch.setenv("RECSYS_INDEX__SPEC__NPROBE", "3")
    settings = load_settings(config, index={"spec": {"ef_search": 9}})
    spec = settings.index.spec
    assert (spec.nlist, spec.nprobe, spec.ef_search, spec.dimension) == (7, 3, 9, 64)


SECRET = "s3cret-never-printed"


@pytest.mark.parametrize(
    ("toml", "location"),
    [
        # A misspelt key, a table where a map of callers belongs, a string for the map...
        (f'[auth]\ntoken = {{ frontend = "{SECRET}" }}\n', "auth.token"),
        (f'[auth]\ntokens = "{SECRET}"\n', "auth.tokens"),
        (f'[auth]\ntokens = {{ frontend = ["{SECRET}"] }}\n', "auth.tokens.frontend"),
        (f'[auth]\ntokens = {{ a = "{SECRET}", b = "{SECRET}" }}\n', "auth.tokens"),
        (f'[auth]\ntokens = {{ a = "{SECRET} x" }}\n', "auth.tokens"),
        (f'[server]\nport = "{SECRET}"\n', "server.port"),
    ],
)
def test_settings_errors_never_print_the_values_given(
    tmp_path: Path, toml: str, location: str
) -> None:
    config = tmp_path / "recsys.toml"
    config.write_text(toml)
    with pytest.raises(ConfigurationError) as caught:
        load_settings(config)
    assert location in caught.value.message
    printed = "".join(traceback.format_exception(caught.value))
    assert SECRET not in printed
    result = CliRunner().invoke(app, ["config", "show", "--config", str(config)])
    assert result.exit_code == 2
    assert location in result.output
    assert SECRET not in result.output


def test_settings_errors_from_the_environment_never_print_the_values_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for value in (SECRET, f'{{"frontend": ["{SECRET}"]}}'):
        monkeypatch.setenv("RECSYS_AUTH__TOKENS", value)
        with pytest.raises(ConfigurationError) as caught:
            load_settings()
        assert SECRET not in "".join(traceback.format_exception(caught.value))


def test_candidate_sources_are_off_until_configured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    defaults = load_settings().candidates
    assert (defaults.neighbours_path, defaults.popularity) == (None, 0)
    # The neighbour count matches the default mix the ranker is trained on (CandidateMix).
    assert (defaults.neighbours, defaults.neighbours_timeout_ms, defaults.history_limit) == (
        CandidateMix().neighbours,
        20,
        500,
    )
    config = tmp_path / "recsys.toml"
    config.write_text(
        '[candidates]\nneighbours_path = "training/item_neighbours.npz"\npopularity = 50\n'
    )
    monkeypatch.setenv("RECSYS_CANDIDATES__NEIGHBOURS", "120")
    settings = load_settings(config)
    assert settings.candidates.neighbours_path == Path("training/item_neighbours.npz")
    assert (settings.candidates.neighbours, settings.candidates.popularity) == (120, 50)
    assert settings.candidates.history_limit == 500
    # Retrieval's depth stays where it was.
    assert settings.recommend.candidates == 1000


@pytest.mark.parametrize(
    ("values", "location"),
    [
        ({"neighbours_timeout_ms": 0}, "candidates.neighbours_timeout_ms"),
        ({"history_limit": 0}, "candidates.history_limit"),
        ({"popularity": -1}, "candidates.popularity"),
        ({"neighbours": -1}, "candidates.neighbours"),
        ({"neighbors": 10}, "candidates.neighbors"),
    ],
)
def test_candidate_source_settings_are_checked(values: dict[str, int], location: str) -> None:
    with pytest.raises(ConfigurationError, match=location):
        load_settings(candidates=values)
