"""The TypeScript client (clients/node) against a real embedded deployment: compiles it with tsc
(NodeNext ESM, as client teams build it) and runs its node:test file, which calls Recommend, an
invalid Recommend (INVALID_ARGUMENT with decoded field violations), a rate-limited Recommend
(RetryInfo), DeleteUserData and the health service.

Needs Node.js 20+ and `npm ci` in clients/node (`make test` runs it). Without them the test is
skipped on a developer machine and fails under CI=true."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from pathlib import Path
from typing import NoReturn

import pytest

from tests.support.world import build_world

pytestmark = pytest.mark.integration

NODE_DIR = Path(__file__).resolve().parents[2] / "clients" / "node"
TSC = NODE_DIR / "node_modules" / ".bin" / "tsc"
TEST_FILE = "dist/test/client.test.js"
# The TAP reporter's summary lines, e.g. "# pass 7".
COUNT = re.compile(r"^# (pass|fail|skipped) (\d+)$", re.MULTILINE)


def _missing(message: str) -> NoReturn:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + " (CI=true: a missing tool is a failure)")
    pytest.skip(message)


def _require_node() -> str:
    node = shutil.which("node")
    if node is None:
        _missing("node is not installed (Node.js 20+ runs the TypeScript client's test)")
    if not TSC.is_file():
        _missing(f"{NODE_DIR / 'node_modules'} is not installed: run `make node-install`")
    return node


async def _run(*command: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *command,
        cwd=NODE_DIR,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout=90)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, output.decode(errors="replace")


async def test_node_client_against_embedded_deployment(tmp_path: Path) -> None:
    node = _require_node()
    # Compile first: a type error is reported as such, before any server starts.
    code, output = await _run(node, str(TSC), "-p", "tsconfig.json")
    assert code == 0, f"tsc failed:\n{output}"
    app = await build_world(tmp_path)
    try:
        env = {**os.environ, "RECSYS_ADDRESS": app.address}
        code, output = await _run(node, "--test", "--test-reporter=tap", TEST_FILE, env=env)
    finally:
        await app.shutdown()
    assert code == 0, f"node --test failed:\n{output}"
    # Every test ran: none skipped (RECSYS_ADDRESS unset) and none failed.
    counts = {name: int(value) for name, value in COUNT.findall(output)}
    assert counts.get("pass", 0) >= 7, output
    assert counts.get("fail") == counts.get("skipped") == 0, output
