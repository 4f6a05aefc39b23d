"""The disaster recovery drill (seed "Backup and Recovery", "Disaster Recovery Testing").

A small sample deployment (a synthetic catalogue, trained, 4 shards, SQLite, the in-memory
feature store) is served by `recsys serve embedded`; a few interactions go in through the real
IngestService; `recsys backup create` backs it up; a few more interactions go in (after the
backup: the data a real disaster loses, bounded by the RPO). Then the disaster: the server is
SIGKILLed and its data folder deleted. From an empty folder, `recsys backup restore latest
--into` brings it back (and validates it), `recsys serve embedded` serves it again, and sample
users are asked until they are answered with the backup's versions.

- RTO: seconds from the fault to that first correct answer (restore, validation and the
  server's start included; the seed's target is 15 minutes);
- RPO: the age, at the fault, of the newest interaction the restored deployment holds (the
  seed's target is 1 hour; with hourly backups it is at most the hour since the last one).

The seed's checklist steps are the rows of a table with what each took here.

    python -m drills.disaster_recovery OUTDIR     runs it alone and prints the result as JSON
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import math
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from drills.report import DrillResult

NAME = "disaster recovery (restore the latest backup into an empty folder)"
CRITERION = (
    "RTO (fault to correct answers) < 15 min, RPO (age of the newest restored interaction) "
    "< 1 h, every restore check passes"
)
RTO_TARGET_S = 15 * 60
RPO_TARGET_S = 60 * 60
# The deployment: small enough that the whole drill takes about a minute on 2 cores.
ITEMS, USERS, INTERACTIONS_PER_USER, NUM_SHARDS = 2_000, 300, 20, 4
SAMPLE_USERS = 20
BEFORE_BACKUP, AFTER_BACKUP = 20, 5
# The catalogue's history ends this long before the drill (the synthetic one is dated 2026).
HISTORY_ENDS_BEFORE = dt.timedelta(hours=6)
SERVE_TIMEOUT_S = 120.0


@dataclasses.dataclass
class _Server:
    process: subprocess.Popen[bytes]
    target: str


def _environment() -> dict[str, str]:
    """The commands' environment without RECSYS_* settings: each reads its --config only."""
    return {name: value for name, value in os.environ.items() if not name.startswith("RECSYS_")}


def _recsys() -> str:
    return str(Path(sys.executable).with_name("recsys"))


def _free_port() -> int:
    from recsys.deploy.ports import free_port

    return free_port()


def _prepare(folder: Path, say: Callable[[str], None]) -> list[str]:
    """The sample deployment in `folder`; returns the ids of its users."""
    from recsys.data.synthetic import synthetic_catalogue
    from recsys.deploy.sample import prepare_deployment
    from recsys.training.dataset import InteractionTable
    from recsys.training.models import EmbeddingSettings, RankerSettings
    from recsys.training.pipeline import train_models

    catalogue = synthetic_catalogue(
        ITEMS, USERS, interactions_per_user=INTERACTIONS_PER_USER, seed=0
    )
    # The history moved so that it ends a few hours before now, as a live deployment's does.
    newest = max(event.event_time for event in catalogue.interactions if event.event_time)
    shift = dt.datetime.now(dt.UTC) - HISTORY_ENDS_BEFORE - newest
    catalogue = dataclasses.replace(
        catalogue,
        interactions=[
            dataclasses.replace(event, event_time=event.event_time + shift)
            for event in catalogue.interactions
            if event.event_time is not None
        ],
    )
    say(f"training on {ITEMS} items, {USERS} users")
    models = train_models(
        catalogue,
        InteractionTable.from_catalogue(catalogue),
        embedding=EmbeddingSettings(factors=32, iterations=10),
        ranker=RankerSettings(folds=2, trees=30),
    )
    asyncio.run(prepare_deployment(catalogue, models, folder, num_shards=NUM_SHARDS))
    return [user.user_id for user in catalogue.users]


def _serve(settings_file: Path, log: Path) -> _Server:
    port = _free_port()
    with open(log, "ab") as output:
        process = subprocess.Popen(
            [_recsys(), "serve", "embedded", "--config", str(settings_file),
             "--port", str(port), "--metrics-port", "0"],
            stdout=output, stderr=subprocess.STDOUT, start_new_session=True, env=_environment(),
        )  # fmt: skip
    return _Server(process, f"127.0.0.1:{port}")


def _client(target: str, timeout: float = 5.0) -> Any:
    from recsys_client import ClientOptions, RecsysClient

    return RecsysClient(ClientOptions(target=target, timeout_seconds=timeout, retry=None))


def _wait_serving(server: _Server, deadline_s: float = SERVE_TIMEOUT_S) -> float:
    """Seconds until readiness says SERVING."""
    from recsys_client import RecsysClientError

    started = time.monotonic()
    with _client(server.target, timeout=1.0) as client:
        while time.monotonic() - started < deadline_s:
            if server.process.poll() is not None:
                raise RuntimeError(f"the server exited with {server.process.returncode}")
            try:
                if client.check_health("readiness", timeout=1.0) == "SERVING":
                    return time.monotonic() - started
            except RecsysClientError:
                pass
            time.sleep(0.1)
    raise TimeoutError(f"{server.target} not serving after {deadline_s:.0f} s")


def _ask(target: str, users: list[str]) -> list[Any]:
    from recsys_client import RecsysClientError

    answers = []
    with _client(target) as client:
        for user in users:
            try:
                answers.append(client.recommend(user, limit=10))
            except RecsysClientError:
                answers.append(None)
    return answers


def _correct(answers: list[Any], versions: dict[str, Any]) -> int:
    return sum(
        1
        for answer in answers
        if answer is not None
        and answer.items
        and answer.model_version == versions["model_version"]
        and answer.index_version == versions["index_version"]
    )


def _ingest(target: str, users: list[str], tag: str, count: int) -> dt.datetime:
    """`count` click events through IngestService; returns the newest event time."""
    from google.protobuf.timestamp_pb2 import Timestamp

    from recsys.v1 import interaction_event_pb2 as events

    now = dt.datetime.now(dt.UTC)
    batch = []
    for number in range(count):
        moment = Timestamp()
        moment.FromDatetime(now - dt.timedelta(milliseconds=count - number))
        batch.append(
            events.InteractionEvent(
                event_id=f"drill-{tag}-{number}",
                user_id=users[number % len(users)],
                item_id=number,
                type=events.INTERACTION_TYPE_CLICK,
                value=1.0,
                event_time=moment,
                surface="homepage",
            )
        )
    with _client(target) as client:
        client.record_interactions(batch)
    return now


def _interactions(database: Path, prefix: str) -> int:
    with sqlite3.connect(database) as connection:
        (count,) = connection.execute(
            "SELECT count(*) FROM interactions WHERE event_id LIKE ?", (prefix + "%",)
        ).fetchone()
    return int(count)


def _newest_interaction(database: Path) -> dt.datetime | None:
    with sqlite3.connect(database) as connection:
        (newest,) = connection.execute("SELECT max(event_time) FROM interactions").fetchone()
    if newest is None:
        return None
    moment = dt.datetime.fromisoformat(str(newest))
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _wait_persisted(database: Path, prefix: str, count: int, deadline_s: float = 30.0) -> None:
    """The embedded consumer writes ingested events to SQL in the background."""
    started = time.monotonic()
    while _interactions(database, prefix) < count:
        if time.monotonic() - started > deadline_s:
            raise TimeoutError(f"{count} events {prefix}* not in SQL after {deadline_s:.0f} s")
        time.sleep(0.1)


def _run(command: list[str], log: Path) -> tuple[int, str, float]:
    started = time.monotonic()
    completed = subprocess.run(
        command, capture_output=True, text=True, check=False, env=_environment()
    )
    with open(log, "a") as output:
        output.write(f"$ {' '.join(command)}\n{completed.stdout}{completed.stderr}\n")
    return completed.returncode, completed.stdout, time.monotonic() - started


def _stop(server: _Server) -> None:
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


def _row(step: str, seed: str, took: float | None, result: str, status: str) -> dict[str, Any]:
    return {
        "step": step,
        "seed timeline": seed,
        "took": "-" if took is None else f"{took:.1f} s",
        "result": result,
        "status": status,
    }


def run(folder: Path) -> DrillResult:
    result = DrillResult(name=NAME, criterion=CRITERION, passed=False)
    started = time.monotonic()
    servers: list[_Server] = []
    try:
        _drill(folder, result, servers)
    except Exception as error:  # a drill that cannot finish is a failed drill, reported
        result.check(f"the drill ran to its end: {type(error).__name__}: {error}", False)
    finally:
        for server in servers:
            _stop(server)
        result.duration_s = time.monotonic() - started
    return result.settle()


def _drill(folder: Path, result: DrillResult, servers: list[_Server]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    data, backups, restored = folder / "data", folder / "backups", folder / "restored"
    for path in (data, backups, restored):
        shutil.rmtree(path, ignore_errors=True)
    log = folder / "drill.log"
    log.write_text("")
    rows: list[dict[str, Any]] = []
    result.tables.append(("Seed DR checklist, as run", rows))

    def say(message: str) -> None:
        with open(log, "a") as output:
            output.write(f"[{time.strftime('%H:%M:%S')}] {message}\n")

    clock = time.monotonic()
    users = _prepare(data, say)
    sample = users[:SAMPLE_USERS]
    rows.append(_row(
        "Prepare: sample deployment (synthetic catalogue, trained, shard snapshots, SQLite)",
        "-", time.monotonic() - clock,
        f"{ITEMS} items, {USERS} users, {USERS * INTERACTIONS_PER_USER} interactions, "
        f"{NUM_SHARDS} shards", "done",
    ))  # fmt: skip

    clock = time.monotonic()
    server = _serve(data / "recsys.toml", folder / "serve-before.log")
    servers.append(server)
    _wait_serving(server)
    before = _ask(server.target, sample)
    answered = sum(1 for answer in before if answer is not None and answer.items)
    first = next(answer for answer in before if answer is not None)
    rows.append(_row(
        "Pre-test baseline: test the recommendation API, FAISS index version",
        "T-30 min", time.monotonic() - clock,
        f"{answered}/{len(sample)} users answered; model {first.model_version}, "
        f"index {first.index_version}", "pass" if answered == len(sample) else "FAIL",
    ))  # fmt: skip

    clock = time.monotonic()
    _ingest(server.target, sample, "before", BEFORE_BACKUP)
    _wait_persisted(data / "recsys.db", "drill-before", BEFORE_BACKUP)
    code, output, took = _run(
        [_recsys(), "backup", "create", "--config", str(data / "recsys.toml"),
         "--to", str(backups)],
        log,
    )  # fmt: skip
    if code != 0:
        raise RuntimeError(f"recsys backup create failed ({code}); see {log}")
    backup_id = output.split()[1]
    manifest = json.loads((backups / backup_id / "manifest.json").read_text())
    versions, counts = manifest["versions"], manifest["counts"]
    rows.append(_row(
        "Pre-test checklist: index, models and database backed up and verified "
        "(`recsys backup create`, after ingesting interactions through IngestService)",
        "hourly, lag < 1 h", took,
        f"{backup_id}: {len(manifest['files'])} files, {counts['interactions']} interactions",
        "done",
    ))  # fmt: skip
    # After the backup: what the disaster loses.
    _ingest(server.target, sample, "after", AFTER_BACKUP)
    _wait_persisted(data / "recsys.db", "drill-after", AFTER_BACKUP)

    # The disaster.
    fault = time.monotonic()
    fault_wall = dt.datetime.now(dt.UTC)
    server.process.send_signal(signal.SIGKILL)
    server.process.wait()
    shutil.rmtree(data)
    rows.append(_row(
        "Simulate primary failure: stop all services (SIGKILL), delete the data folder",
        "T+0", time.monotonic() - fault, "server killed, data folder gone", "done",
    ))  # fmt: skip
    detected = _detect(server.target, fault)
    result.time_to_detect_s = round(detected, 2) if detected is not None else None
    rows.append(_row(
        "Detect failure via health checks", "T+0-1 min", detected,
        "readiness check refused" if detected is not None else "still answering",
        "pass" if detected is not None else "FAIL",
    ))  # fmt: skip
    for step, seed in (
        ("Promote secondary region to primary", "T+1-3 min"),
        ("Update DNS records", "T+3-4 min"),
    ):
        rows.append(
            _row(step, seed, None, "one region here: the empty folder is the standby", "n/a")
        )

    report_file = folder / "restore-report.json"
    code, _, restore_took = _run(
        [_recsys(), "backup", "restore", "latest", "--from", str(backups),
         "--into", str(restored), "--report", str(report_file)],
        log,
    )  # fmt: skip
    if not report_file.is_file():
        raise RuntimeError(f"recsys backup restore failed ({code}) without a report; see {log}")
    report = json.loads(report_file.read_text())
    steps: dict[str, float] = report["steps"]
    checks = {check["name"]: check for check in report["checks"]}

    def took_of(*names: str) -> float:
        return sum(seconds for name, seconds in steps.items() if name.startswith(names))

    def status_of(*names: str) -> str:
        # A check the restore did not run is not a pass.
        ok = bool(names) and all(name in checks and checks[name]["ok"] for name in names)
        return "pass" if ok else "FAIL"

    rows.append(_row(
        "Load FAISS index from latest snapshot (copy and verify checksums, write the snapshots)",
        "T+4-8 min", took_of("copy and verify", "index snapshots"),
        checks["index snapshots verify"]["measured"], status_of("index snapshots verify"),
    ))  # fmt: skip
    rows.append(_row(
        "Load ranking model from latest snapshot (model repository, releases, neighbours)",
        "T+8-10 min", took_of("model repository"),
        f"model {checks['model version']['measured']}", status_of("model version"),
    ))  # fmt: skip
    rows.append(_row(
        "Warm up the stores from the backup (SQL dump, feature store)",
        "T+10-12 min", took_of("SQL", "feature store"),
        f"{checks['interactions']['measured']} interactions, "
        f"{checks['user embeddings']['measured']} user embeddings",
        status_of("items", "users", "interactions", "user embeddings"),
    ))  # fmt: skip
    rows.append(_row(
        "Verify all services healthy (`recsys backup restore` validation)",
        "T+12-14 min", took_of("validate"),
        f"{sum(check['ok'] for check in checks.values())}/{len(checks)} checks pass",
        "pass" if report["ok"] else "FAIL",
    ))  # fmt: skip

    clock = time.monotonic()
    server = _serve(restored / "recsys.toml", folder / "serve-after.log")
    servers.append(server)
    _wait_serving(server)
    after: list[Any] = []
    while time.monotonic() - clock < SERVE_TIMEOUT_S:
        after = _ask(server.target, sample)
        if _correct(after, versions) == len(sample):
            break
        time.sleep(0.2)
    recovered = time.monotonic()
    correct = _correct(after, versions)
    rto = recovered - fault
    rows.append(_row(
        "Resume traffic: serve the restored folder, sample users answered with the backup's "
        "versions", "T+14-15 min", recovered - clock,
        f"{correct}/{len(sample)} correct at T+{rto:.1f} s",
        "pass" if correct == len(sample) else "FAIL",
    ))  # fmt: skip

    database = restored / "recsys.db"
    # What the restored deployment holds, not what the backup's manifest says it should.
    newest = _newest_interaction(database)
    rpo = (fault_wall - newest).total_seconds() if newest is not None else math.inf
    kept = _interactions(database, "drill-before")
    # Ingested after the backup: not restored (what the RPO bounds).
    lost = AFTER_BACKUP - _interactions(database, "drill-after")
    cold = _ask(server.target, ["drill-someone-new"])[0]
    result.time_to_recover_s = round(rto, 1)
    rows += [
        _row("Verify RTO < 15 minutes", "T+15 min", None, f"RTO {rto:.1f} s",
             "pass" if rto < RTO_TARGET_S else "FAIL"),
        _row("Verify RPO < 1 hour (newest restored interaction at the fault)", "T+15 min", None,
             f"RPO {rpo:.1f} s; {kept}/{BEFORE_BACKUP} events before the backup restored, "
             f"{lost}/{AFTER_BACKUP} after it lost (within the RPO)",
             "pass" if rpo < RPO_TARGET_S else "FAIL"),
        _row("Test recommendation API (sample users)", "T+15-30 min", None,
             f"{correct}/{len(sample)} users", "pass" if correct == len(sample) else "FAIL"),
        _row("Test recommendation quality vs baseline (> 95%)", "T+15-30 min", None,
             _measured(checks, "quality"), status_of(*[n for n in checks if "quality" in n])),
        _row("Verify FAISS index: integrity, all items searchable", "T+15-30 min", None,
             f"{checks['index items (all searchable)']['measured']} items, version "
             f"{checks['index version']['measured']}",
             status_of("index items (all searchable)", "index version")),
        _row("Compare user/item counts pre vs post failover", "data integrity", None,
             f"items {checks['items']['measured']}, users {checks['users']['measured']}",
             status_of("items", "users")),
        _row("Check model version matches", "data integrity", None,
             checks["model version"]["measured"], status_of("model version")),
        _row("Test edge cases: a cold-start user", "data integrity", None,
             "answered, cold start" if cold is not None and cold.cold_start else "not answered",
             "pass" if cold is not None and cold.items else "FAIL"),
    ]  # fmt: skip

    result.requests = len(sample)
    result.client_errors = sum(answer is None for answer in after)
    result.check(
        f"RTO: {rto:.1f} s (< {RTO_TARGET_S} s), {correct}/{len(sample)} answered correctly",
        rto < RTO_TARGET_S and correct == len(sample),
    )
    result.check(f"RPO: {rpo:.1f} s (< {RPO_TARGET_S} s)", rpo < RPO_TARGET_S)
    result.check(
        f"restore checks: {sum(c['ok'] for c in checks.values())}/{len(checks)} pass "
        f"(`recsys backup restore` exit {code})",
        bool(checks) and report["ok"] and code == 0,
    )
    result.check(
        f"sample users answered with the backup's versions after the restore: "
        f"{correct}/{len(sample)}",
        correct == len(sample),
    )
    result.check(
        f"interactions before the backup restored: {kept}/{BEFORE_BACKUP}", kept == BEFORE_BACKUP
    )
    result.notes += [
        f"backup {backup_id} ({manifest['seconds']:.1f} s to make); restore took "
        f"{restore_took:.1f} s including its validation; the server answered "
        f"{recovered - clock:.1f} s after it started",
        f"{lost} of {AFTER_BACKUP} interactions ingested after the backup are not in the "
        "restored deployment: the loss the RPO bounds",
        f"RTO counts from the SIGKILL to the first round of {len(sample)} correct answers",
        "RPO here is the age of the newest interaction in the restored database at the fault, "
        "with the backup taken seconds before it; with the hourly CronJob the worst case is "
        f"the interval plus a backup's duration (1 h + {manifest['seconds']:.0f} s on this "
        "deployment), at the seed's 1 h target rather than under it: schedule backups more "
        "often than hourly (or ship the WAL) to stay under it",
    ]


def _measured(checks: dict[str, Any], prefix: str) -> str:
    found = [check for name, check in checks.items() if name.startswith(prefix)]
    return "; ".join(f"{check['measured']} vs {check['expected']}" for check in found) or "-"


def _detect(target: str, fault: float, deadline_s: float = 60.0) -> float | None:
    """Seconds from the fault until a readiness check fails."""
    from recsys_client import RecsysClientError

    with _client(target, timeout=1.0) as client:
        while time.monotonic() - fault < deadline_s:
            try:
                client.check_health("readiness", timeout=1.0)
            except RecsysClientError:
                return time.monotonic() - fault
            time.sleep(0.1)
    return None


def main() -> None:
    if len(sys.argv) != 2:
        sys.stderr.write("usage: python -m drills.disaster_recovery OUTDIR\n")
        raise SystemExit(2)
    outcome = run(Path(sys.argv[1]))
    sys.stdout.write(json.dumps(outcome.to_dict(), indent=2) + "\n")
    raise SystemExit(0 if outcome.passed else 1)


if __name__ == "__main__":
    main()
