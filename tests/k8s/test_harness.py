"""The prod overlay, run: every recsys workload of `kubectl kustomize k8s/overlays/prod` started
as local processes from its container's command, args, environment and volumes (one replica of
each Deployment, the StatefulSet shard-a with its 10 ordinals; tests/k8s/harness.py says what is
mapped to what), probed exactly as its startup, liveness and readiness probes say; then Recommend
through the recommend Service's port, over mutual TLS with an external client's certificate,
gets a full answer (no degradation flag set), and a Recommend without a client certificate on
that port is refused while the probes keep passing. A wrong flag, env var name, port, probe name
or Service address in the manifests fails here.

Deviations from the cluster (documented, not hidden): PgBouncer is not run (the database URL
points at PostgreSQL), Triton is MLServer on the same ONNX model (KServe V2 on the triton pod's
ports, probed with Triton's own probes), shard-b and shard-c are not run (their pod addresses in
retrieve's targets reach shard-a's pod of the same ordinal), the server certificate is issued for
127.0.0.1 (the Service names are rewritten to loopback addresses), the test broker's topics are
created by the harness (prod: create_topics = false, replication 3 on one broker is impossible)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import threading
import time
import tomllib
import uuid
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import redis
from sqlalchemy import text

from recsys.v1 import recommend_service_pb2, recommend_service_pb2_grpc
from tests.k8s.harness import Cluster, Externals, probe_once, wait_for_probe
from tests.k8s.test_manifests import _data, _kubectl, _named, _render
from tests.support.kafka import running_broker
from tests.support.mlserver import prepare as prepare_mlserver
from tests.support.services import require_postgres, require_redis

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]
ITEMS = 500
CATEGORIES = ["Action", "Comedy", "Drama", "Horror", "Kids"]
PROBES = ("startupProbe", "livenessProbe", "readinessProbe")


def _seed(settings_toml: dict[str, Any], release: dict[str, str], externals: Externals,
          artifacts: Path, mounts_root: Path) -> None:  # fmt: skip
    """Snapshots, a model repository and a release on the artifacts volume; item metadata,
    features and one user on the shared stores."""
    from recsys.adapters.snapshots.local import LocalSnapshotStore
    from recsys.index.builder import build_shard_snapshots
    from recsys.index.embeddings_file import ItemEmbeddings
    from recsys.index.snapshots import SnapshotManager
    from recsys.index.spec import IndexSpec
    from recsys.metadata.migrate import upgrade
    from recsys.ranking.model_repository import ModelRepository
    from recsys.release import ReleaseManifest, ReleaseStore
    from recsys.settings import DatabaseSettings

    index = settings_toml["index"]
    spec = IndexSpec(**index.get("spec", {}))
    num_shards = int(index["num_shards"])
    snapshots_dir = Path(index["snapshot_dir"])
    models_dir = Path(settings_toml["rank"]["model_repository"])
    releases_dir = Path(settings_toml["release"]["directory"])
    assert artifacts in snapshots_dir.parents
    assert artifacts in models_dir.parents
    rng = np.random.default_rng(11)
    vectors = rng.normal(size=(ITEMS, spec.dimension)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    embedding_version = release["EMBEDDING_VERSION"]
    snapshots = SnapshotManager(LocalSnapshotStore(snapshots_dir))
    build_shard_snapshots(
        ItemEmbeddings(np.arange(ITEMS, dtype=np.int64), vectors, embedding_version),
        spec, num_shards=num_shards, index_version="idx-1", snapshots=snapshots,
    )  # fmt: skip
    model_name, _, model_version = release["MODEL_VERSION"].partition(":")
    (models_dir / model_name).mkdir(parents=True, exist_ok=True)
    import shutil

    shutil.copytree(ROOT / "triton_models" / "ranker", models_dir / model_name, dirs_exist_ok=True)
    if model_version != "1":
        shutil.copytree(models_dir / model_name / "1", models_dir / model_name / model_version)
    releases_dir.mkdir(parents=True, exist_ok=True)
    ReleaseStore(releases_dir).publish(
        ReleaseManifest(
            release_id="harness-1", model_version=release["MODEL_VERSION"],
            embedding_version=embedding_version, index_version="idx-1",
            num_shards=num_shards, created_at=dt.datetime.now(dt.UTC),
        ),
        snapshots=snapshots, models=ModelRepository(models_dir, model_name),
    )  # fmt: skip
    database = DatabaseSettings(url=externals.database_url, schema_name=externals.database_schema)
    upgrade(database)
    mounts_root.mkdir(parents=True, exist_ok=True)
    asyncio.run(_seed_stores(vectors, embedding_version, externals, mounts_root))


async def _seed_stores(
    vectors: np.ndarray, embedding_version: str, externals: Externals, folder: Path
) -> None:
    from recsys.composition import Components
    from recsys.ports.features import ItemFeatures, UserEmbedding
    from recsys.ports.metadata import ItemMetadata, UserProfile
    from tests.conftest import make_settings

    settings = make_settings(
        folder,
        redis={"url": externals.redis_url, "namespace": externals.redis_namespace},
        database={"url": externals.database_url, "schema_name": externals.database_schema},
        features={"store": "redis"},
        recommend={"metadata": "sql"},
        index={"spec": {"dimension": vectors.shape[1]}},
    )
    components = Components(settings)
    try:
        now = dt.datetime.now(dt.UTC)
        items = [
            ItemMetadata(item_id=i, category=CATEGORIES[i % len(CATEGORIES)], adult=False,
                         available_regions=(), popularity=float((i * 37) % 100) / 100)
            for i in range(ITEMS)
        ]  # fmt: skip
        features = components.feature_store
        await features.put_item_features(
            {m.item_id: ItemFeatures(m.category, m.popularity, 0.5, vectors[m.item_id])
             for m in items}
        )  # fmt: skip
        default = UserEmbedding(vectors.mean(axis=0), embedding_version, now)
        await features.put_default_user_embedding(default)
        await features.put_user_embedding(
            "alice", UserEmbedding(vectors[1], embedding_version, now)
        )
        await components.metadata.upsert_items(items)
        await components.metadata.upsert_users([UserProfile("alice", 30, "US")])
    finally:
        await components.resources.aclose()


def _cleanup(externals: Externals) -> None:
    from recsys.metadata.database import create_migration_engine
    from recsys.settings import DatabaseSettings

    client = redis.Redis.from_url(externals.redis_url)
    keys = list(client.scan_iter(match=f"{externals.redis_namespace}:*"))
    if keys:
        client.delete(*keys)
    client.close()
    database = DatabaseSettings(url=externals.database_url, schema_name="")
    engine = create_migration_engine(database)
    with engine.begin() as connection:
        connection.execute(text(f'DROP SCHEMA IF EXISTS "{externals.database_schema}" CASCADE'))
    engine.dispose()


def _create_topics(bootstrap: str, environment: dict[str, str]) -> None:
    from recsys.events.admin import KafkaAdmin
    from recsys.settings import KafkaSettings

    # The topic names the pods use (their RECSYS_KAFKA__* settings), one replica.
    values = {
        key.removeprefix("RECSYS_KAFKA__").lower(): value
        for key, value in environment.items()
        if key.startswith("RECSYS_KAFKA__") and key.endswith("_TOPIC")
    }
    settings = KafkaSettings(bootstrap_servers=bootstrap, replication_factor=1, partitions=2,
                             **values)  # fmt: skip
    asyncio.run(KafkaAdmin(settings).ensure_topics())


def _recommend(address: str, credentials: grpc.ChannelCredentials) -> Any:
    with grpc.secure_channel(address, credentials) as channel:
        stub = recommend_service_pb2_grpc.RecommendServiceStub(channel)
        return stub.Recommend(
            recommend_service_pb2.RecommendRequest(user_id="alice", surface="homepage", limit=10),
            timeout=10,
        )


def _degradations(response: Any) -> dict[str, Any]:
    return {d.name: v for d, v in response.degradation.ListFields() if v}


def test_the_prod_overlay_runs_probes_pass_and_recommend_answers_in_full(
    tmp_path: Path,
) -> None:
    timings = run_overlay(_render(_kubectl(), "prod"), tmp_path)
    print(json.dumps(timings, indent=1))


def run_overlay(objects: tuple[dict[str, Any], ...], tmp_path: Path) -> dict[str, Any]:
    """Runs the overlay's objects locally and checks them end to end (see the module's
    docstring); returns how long each step took. AssertionError (HarnessError among them)
    says what did not work."""
    redis_url = require_redis()
    postgres = require_postgres()
    timings: dict[str, float] = {}
    began = time.monotonic()
    cluster = Cluster(objects, tmp_path / "cluster")
    # The workloads run: every Deployment of the recsys image, one replica; shard-a's ordinals.
    servers = [c for c in cluster.containers if c.is_recsys and c.long_running]
    deployments = [c for c in servers if c.workload["kind"] == "Deployment"]
    shard_set = cluster.workload_container("shard-a", "StatefulSet")
    assert {c.workload["metadata"]["name"] for c in deployments} == {
        "recommend", "retrieve", "rank", "consume"}  # fmt: skip
    for container in deployments:
        cluster.add_pods(container, [0])
    shard_pods = cluster.add_pods(shard_set, range(int(shard_set.workload["spec"]["replicas"])))
    for other in servers:
        if other.workload["kind"] == "StatefulSet" and other is not shard_set:
            name = other.workload["metadata"]["name"]
            for pod in shard_pods:
                cluster.add_stand_in(f"{name}-{pod.ordinal}", pod)
    # Triton: MLServer on the triton pod's ports.
    (triton,) = cluster.add_pods(cluster.workload_container("triton", "Deployment"), [0])
    mlserver = prepare_mlserver(tmp_path / "mlserver", ROOT / "triton_models/ranker/1/model.onnx")
    by_name = {"http": mlserver.http_port, "grpc": mlserver.grpc_port,
               "metrics": mlserver.metrics_port}  # fmt: skip
    triton.ports = {number: by_name[name] for name, number in triton.port_names.items()}
    run = uuid.uuid4().hex[:10]
    recsys_pods = [p for p in cluster.pods if p is not triton]
    with running_broker(tmp_path) as broker:
        externals = Externals(
            redis_url=redis_url,
            redis_namespace=f"k8s-harness-{run}",
            database_url=postgres,
            database_schema=f"k8s_harness_{run}",
            kafka_bootstrap=broker.bootstrap_servers,
        )
        mlserver_error: list[BaseException] = []

        def start_mlserver() -> None:
            try:
                mlserver.start(timeout=150)
            except BaseException as error:
                mlserver_error.append(error)

        try:
            # The model server takes longest: it starts while the rest is prepared.
            model_server = threading.Thread(target=start_mlserver, daemon=True)
            model_server.start()
            for pod in recsys_pods:
                cluster.prepare(pod, externals)
            recommend = cluster.pod("recommend-0")
            settings_toml = tomllib.loads(recommend.config_files[0].read_text())
            release = _data(
                _named(objects, "ConfigMap")[
                    next(n for n in _named(objects, "ConfigMap") if n.startswith("recsys-release"))
                ]
            )
            _seed(settings_toml, release, externals, cluster.claim("recsys-artifacts"),
                  tmp_path / "seed")  # fmt: skip
            _create_topics(broker.bootstrap_servers, recommend.environment)
            timings["prepared"] = time.monotonic() - began
            model_server.join(timeout=150)
            assert not mlserver_error, mlserver_error
            timings["model server ready"] = time.monotonic() - began
            # Triton's own probes, against its stand-in.
            for kind in PROBES:
                wait_for_probe(triton, kind, since=time.monotonic())
            for pod in recsys_pods:
                cluster.start(pod)
            # Every probe, as the kubelet runs them: startup, then liveness and readiness.
            for pod in recsys_pods:
                timings[f"{pod.name} started"] = wait_for_probe(
                    pod, "startupProbe", since=pod.started_at
                )
                assert probe_once(pod, pod.container.spec["livenessProbe"]) is None
            for pod in recsys_pods:
                wait_for_probe(pod, "readinessProbe", since=time.monotonic(),
                               budget=60.0)  # fmt: skip
            timings["all ready"] = time.monotonic() - began

            # Recommend through the recommend Service's port, over mTLS, as an external client.
            address = f"127.0.0.1:{cluster.resolve('recommend', 50051)}"
            service = _named(objects, "Service")["recommend"]
            assert any(p["port"] == 50051 for p in service["spec"]["ports"])
            ca = cluster.authority.pair.cert.read_bytes()
            client = cluster.authority.issue_client(
                "external-client", uris=("spiffe://clients.example/web-frontend",)
            )
            with_certificate = grpc.ssl_channel_credentials(
                root_certificates=ca,
                private_key=client.key.read_bytes(),
                certificate_chain=client.cert.read_bytes(),
            )
            deadline = time.monotonic() + 30
            attempts: list[Any] = []
            while True:
                try:
                    response = _recommend(address, with_certificate)
                    attempts.append(_degradations(response))
                    if response.items and not _degradations(response):
                        break
                except grpc.RpcError as error:
                    attempts.append(f"{error.code().name}: {error.details()}")
                if time.monotonic() > deadline:
                    logs = "\n".join(f"--- {p.name}\n{p.tail(2000)}" for p in recsys_pods[:4])
                    pytest.fail(f"no full answer: {attempts}\n{logs}")
                time.sleep(1)
            timings["full answer"] = time.monotonic() - began
            assert len(response.items) == 10
            assert len({item.item_id for item in response.items}) == 10
            # Without a client certificate the service port refuses the call...
            without = grpc.ssl_channel_credentials(root_certificates=ca)
            with pytest.raises(grpc.RpcError) as refused:
                _recommend(address, without)
            assert refused.value.code() in (
                grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAUTHENTICATED)  # fmt: skip
            # ... while every probe still passes.
            for pod in recsys_pods:
                for kind in ("livenessProbe", "readinessProbe"):
                    why = probe_once(pod, pod.container.spec[kind])
                    assert why is None, f"{pod.name} {kind}: {why}"
            timings["total"] = time.monotonic() - began
            timings["recommend attempts"] = len(attempts)
            return timings
        finally:
            cluster.stop_all()
            mlserver.stop()
            _cleanup(externals)
