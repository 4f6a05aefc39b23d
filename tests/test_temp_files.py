"""The run-wide check in conftest.py: a run that leaves new `recsys-*` entries in the system
temp folder fails; entries that were there before it started are not its doing."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_pytest(folder: Path, test_body: str) -> subprocess.CompletedProcess[str]:
    """Runs one test in a separate pytest session with this suite's conftest as a plugin."""
    (folder / "pytest.ini").write_text("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    (folder / "test_inner.py").write_text(
        f"import os, tempfile\n\n\ndef test_inner():\n    {test_body}\n"
    )
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "-p", "no:cacheprovider",
         "test_inner.py"],
        cwd=folder, env={**os.environ, "PYTHONPATH": path},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_a_run_that_leaves_a_recsys_temp_folder_fails(tmp_path: Path) -> None:
    name = f"recsys-leak-{uuid.uuid4().hex[:12]}"
    leaked = Path(tempfile.gettempdir()) / name
    try:
        result = run_pytest(tmp_path, f"os.mkdir(os.path.join(tempfile.gettempdir(), {name!r}))")
    finally:
        if leaked.is_dir():
            leaked.rmdir()
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 passed" in result.stdout
    assert f"left 1 new recsys-* entries in {tempfile.gettempdir()}: {name}" in result.stdout


def test_leftovers_from_before_the_run_are_not_its_fault(tmp_path: Path) -> None:
    earlier = Path(tempfile.mkdtemp(prefix="recsys-earlier-", dir=tempfile.gettempdir()))
    try:
        result = run_pytest(tmp_path, "assert os.path.isdir(tempfile.gettempdir())")
    finally:
        earlier.rmdir()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "left" not in result.stdout
