"""The `recsys` command line: help for every command, settings errors, and `recsys serve`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from typer.testing import CliRunner

from recsys.cli import app
from tests.conftest import drain_stderr, wait_for_address

runner = CliRunner()


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["serve"],
        ["services"],
        ["adapters"],
        ["config"],
        ["config", "show"],
        ["index"],
        ["index", "build"],
        ["index", "info"],
        ["index", "verify"],
        ["index", "rollback"],
        ["data"],
        ["data", "embeddings"],
        ["data", "load"],
        ["data", "features"],
        ["train"],
        ["eval"],
        ["demo"],
        ["model"],
        ["model", "init-reference"],
        ["model", "check"],
        ["db"],
        ["db", "upgrade"],
        ["up"],
        ["release"],
        ["release", "publish"],
        ["release", "status"],
        ["release", "rollback"],
    ],
)
def test_every_command_has_help(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_config_show_merges_file_and_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "recsys.toml"
    config.write_text('[server]\nport = 6000\nhost = "0.0.0.0"\n')
    monkeypatch.setenv("RECSYS_SERVER__PORT", "7000")
    result = runner.invoke(app, ["config", "show", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert '"port": 7000' in result.output
    assert '"host": "0.0.0.0"' in result.output


def test_invalid_settings_exit_with_a_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSYS_SERVER__PORT", "not-a-port")
    result = runner.invoke(app, ["config", "show"])
    assert result.exit_code == 2
    assert "server.port" in result.output


def test_unknown_service_is_refused() -> None:
    result = runner.invoke(app, ["serve", "nonsense"])
    assert result.exit_code == 2
    assert "unknown service" in result.output


@pytest.mark.integration
def test_serve_embedded_answers_health_and_reflection(tmp_path: Path) -> None:
    """What `make run` starts: a real process with health and reflection."""
    executable = Path(sys.executable).with_name("recsys")
    process = subprocess.Popen(
        [str(executable), "serve", "embedded", "--port", "0", "--metrics-port", "0"],
        stderr=subprocess.PIPE,
        text=True,
        env={
            **os.environ,
            "RECSYS_SERVER__SHUTDOWN_DRAIN_SECONDS": "0.1",
            "RECSYS_INDEX__SNAPSHOT_DIR": str(tmp_path),
            "RECSYS_DATABASE__URL": f"sqlite+aiosqlite:///{tmp_path / 'meta.db'}",
        },
    )
    try:
        address = wait_for_address(process)
        reader = drain_stderr(process)
        with grpc.insecure_channel(address) as channel:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="readiness"), timeout=5
            )
            assert response.status == health_pb2.HealthCheckResponse.SERVING
            services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
        assert {
            "recsys.v1.RecommendService",
            "recsys.v1.IngestService",
            "recsys.v1.RetrieveService",
            "recsys.v1.RankService",
        } <= services
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
        reader.join(timeout=5)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_data_embeddings_writes_a_loadable_file(tmp_path: Path) -> None:
    from recsys.index.embeddings_file import load_embeddings

    output = tmp_path / "items.npz"
    result = runner.invoke(
        app, ["data", "embeddings", "--output", str(output), "--items", "500", "--dimension", "8"]
    )
    assert result.exit_code == 0, result.output
    loaded = load_embeddings(output)
    assert loaded.vectors.shape == (500, 8)
    assert loaded.embedding_version == "emb-synthetic"


def test_db_upgrade_creates_the_schema(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    database = tmp_path / "meta.db"
    monkeypatch.setenv("RECSYS_DATABASE__URL", f"sqlite+aiosqlite:///{database}")
    result = runner.invoke(app, ["db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert "database at revision 0004" in result.output
    assert database.is_file()
