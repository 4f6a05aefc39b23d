"""Commands that open the SQL metadata store: a fresh embedded SQLite file is migrated first
(as `recsys serve` does), and a database error ends the command with one line, exit code 1."""

from __future__ import annotations

import contextlib
import sqlite3
import uuid
from pathlib import Path

import pytest
from sqlalchemy.exc import IntegrityError
from typer.testing import CliRunner

from recsys.cli import app
from recsys.cli_common import fail
from recsys.metadata.migrate import head_revision
from recsys.settings import DatabaseSettings

runner = CliRunner()
SYNTHETIC = ["--items", "200", "--users", "40", "--interactions-per-user", "5", "--seed", "3"]


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


def count(database: Path, table: str) -> int:
    with contextlib.closing(sqlite3.connect(database)) as connection:
        (rows,) = connection.execute(f"SELECT count(*) FROM {table}").fetchone()
    return int(rows)


def test_data_load_migrates_a_fresh_sqlite_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = tmp_path / "fresh" / "meta.db"  # neither the file nor its folder exists
    monkeypatch.setenv("RECSYS_DATABASE__URL", sqlite_url(database))
    result = runner.invoke(app, ["data", "load", *SYNTHETIC, "--metadata-only"])
    assert result.exit_code == 0, result.output
    assert "loaded 200 items, 40 users and 200 interactions (sql metadata)" in result.output
    assert (count(database, "items"), count(database, "users")) == (200, 40)
    # Once more on the migrated file: the migration is a no-op, the upserts replace.
    again = runner.invoke(app, ["data", "load", *SYNTHETIC, "--metadata-only"])
    assert again.exit_code == 0, again.output
    assert count(database, "items") == 200


@pytest.mark.integration
def test_readme_step_0_works_on_a_fresh_clone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, movielens_path: Path
) -> None:
    """The README's first command, with the default settings, in a checkout without var/."""
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(
        app, ["data", "load", "--movielens", str(movielens_path), "--metadata-only"]
    )
    assert result.exit_code == 0, result.output[-2000:]
    assert "loaded 1682 items, 943 users and 100000 interactions" in result.output
    assert count(tmp_path / "var" / "recsys.db", "items") == 1682


def test_an_sql_error_is_one_line_without_parameters_and_exit_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = tmp_path / "meta.db"
    monkeypatch.setenv("RECSYS_DATABASE__URL", sqlite_url(database))
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    # At the head revision, yet the table is gone: the first insert fails.
    with contextlib.closing(sqlite3.connect(database)) as connection:
        connection.execute("DROP TABLE items")
        connection.commit()
    result = runner.invoke(app, ["data", "load", *SYNTHETIC, "--metadata-only"])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr[:2000]
    assert result.stderr.startswith("recsys: database unavailable:")
    assert "no such table: items" in result.stderr
    assert "[SQL" not in result.stderr
    assert "category-" not in result.stderr  # the rows' values


def test_fail_prints_one_line_and_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    """A raw SQLAlchemy error loses the statement, the parameters and PostgreSQL's DETAIL line
    (which quotes row values); any other message is joined into one line."""
    driver = Exception(
        'duplicate key value violates unique constraint "users_pkey"\n'
        "DETAIL:  Key (user_id)=(alice) already exists."
    )
    error = IntegrityError("INSERT INTO users (user_id) VALUES (%s)", ("alice",), driver)
    assert fail(error).exit_code == 1
    assert fail(ValueError("first\n\n  second  \n")).exit_code == 1
    assert capsys.readouterr().err.splitlines() == [
        'recsys: (builtins.Exception) duplicate key value violates unique constraint "users_pkey"',
        "recsys: first second",
    ]


@pytest.mark.integration
def test_data_load_refuses_an_unmigrated_postgres_schema(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A server database is migrated on purpose (`recsys db upgrade`), never by a loader."""
    from tests.support.services import require_postgres

    schema = f"test_{uuid.uuid4().hex[:12]}"  # never created: nothing to clean up
    monkeypatch.setenv("RECSYS_DATABASE__URL", require_postgres())
    monkeypatch.setenv("RECSYS_DATABASE__SCHEMA_NAME", schema)
    result = runner.invoke(app, ["data", "load", *SYNTHETIC, "--metadata-only"])
    assert result.exit_code == 1
    assert result.stderr == (
        "recsys: the metadata database is at revision None; run `recsys db upgrade`\n"
    )


def test_head_revision_is_the_newest_migration(tmp_path: Path) -> None:
    assert head_revision(DatabaseSettings(url=sqlite_url(tmp_path / "meta.db"))) == "0004"
