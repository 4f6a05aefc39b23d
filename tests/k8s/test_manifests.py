"""The k8s/ manifests, offline: every overlay renders (`kubectl kustomize`), every rendered
object validates against the Kubernetes schemas (strict: unknown fields fail), and the policies
the platform relies on hold: probes on the server's health names (on the plaintext health port
under TLS), resources, a non-root read-only security context, the 10 shard ordinals and
retrieve's targets, Service ports, grace periods above drain + grace, settings the server
accepts and `recsys` commands that exist. Without kubectl the tests are skipped, except under
CI=true, where they fail."""

from __future__ import annotations

import base64
import functools
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from typer.testing import CliRunner

from recsys import services
from recsys.cli import app
from recsys.errors import ConfigurationError
from recsys.grpc_server.app import LIVENESS, OVERALL, READINESS
from recsys.settings import ENV_PREFIX, RecsysSettings, load_settings
from recsys.v1 import (
    index_shard_service_pb2,
    ingest_service_pb2,
    rank_service_pb2,
    recommend_service_pb2,
    retrieve_service_pb2,
)

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
OVERLAYS = ("dev", "prod", "us-east", "eu-west", "apac")
# The oldest release the manifests support (the pod-index label is 1.28+), and the newest the
# validator knows.
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob")
# The health names a probe may ask for: overall, liveness, readiness, and every service
# (`dependency.*` names are for dashboards, never for probes).
SERVICE_NAMES = {
    module.DESCRIPTOR.services_by_name[name].full_name
    for module, name in (
        (recommend_service_pb2, "RecommendService"),
        (ingest_service_pb2, "IngestService"),
        (retrieve_service_pb2, "RetrieveService"),
        (rank_service_pb2, "RankService"),
        (index_shard_service_pb2, "IndexShardService"),
    )
}
PROBE_NAMES = {OVERALL, LIVENESS, READINESS} | SERVICE_NAMES
# What stands for values the cluster fills in (Secrets created outside the repository, the
# downward API): any free-form string setting accepts it; settings the server parses get a
# value of their shape (the format k8s/README.md documents for the Secret).
PLACEHOLDER = "placeholder"
SHAPED_PLACEHOLDERS = {"RECSYS_REDIS__URL": "rediss://:placeholder@placeholder:6379/0"}


def _kubectl() -> str:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        message = "kubectl not found (it renders the kustomize overlays)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + " (CI=true: kubectl is required)")
        pytest.skip(message)
    return kubectl


@functools.cache
def _render(kubectl: str, overlay: str) -> tuple[dict[str, Any], ...]:
    result = subprocess.run(
        [kubectl, "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"{overlay} does not render:\n{result.stderr}"
    return tuple(document for document in yaml.safe_load_all(result.stdout) if document)


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def objects(overlay: str) -> tuple[dict[str, Any], ...]:
    return _render(_kubectl(), overlay)


# --- what the rendered objects hold --------------------------------------------------------


@dataclass(frozen=True)
class Container:
    workload: dict[str, Any]
    pod: dict[str, Any]  # the pod template's spec
    pod_labels: dict[str, str]
    spec: dict[str, Any]
    init: bool

    @property
    def name(self) -> str:
        return f"{self.workload['kind']}/{self.workload['metadata']['name']}/{self.spec['name']}"

    @property
    def long_running(self) -> bool:
        return self.workload["kind"] in ("Deployment", "StatefulSet", "DaemonSet")

    @property
    def is_recsys(self) -> bool:
        """Runs the recsys image with its entrypoint (`recsys`)."""
        image = self.spec["image"].split("@")[0].rsplit(":", 1)[0]
        return image.rsplit("/", 1)[-1] == "recsys" and "command" not in self.spec

    @property
    def is_server(self) -> bool:
        args = self.spec.get("args", [])
        return self.is_recsys and self.long_running and bool(args) and args[0] == "serve"


def _pod_template(workload: dict[str, Any]) -> dict[str, Any]:
    if workload["kind"] == "CronJob":
        return dict(workload["spec"]["jobTemplate"]["spec"]["template"])
    return dict(workload["spec"]["template"])


def _containers(objects: tuple[dict[str, Any], ...]) -> Iterator[Container]:
    for workload in objects:
        if workload["kind"] not in WORKLOAD_KINDS:
            continue
        template = _pod_template(workload)
        labels = template.get("metadata", {}).get("labels", {})
        pod = template["spec"]
        for key, init in (("initContainers", True), ("containers", False)):
            for spec in pod.get(key, []):
                yield Container(workload, pod, labels, spec, init)


def _named(objects: tuple[dict[str, Any], ...], kind: str) -> dict[str, dict[str, Any]]:
    return {item["metadata"]["name"]: item for item in objects if item["kind"] == kind}


def _data(item: dict[str, Any]) -> dict[str, str]:
    """A ConfigMap's or Secret's values, decoded."""
    values = dict(item.get("data") or {})
    if item["kind"] == "Secret":
        values = {key: base64.b64decode(value).decode() for key, value in values.items()}
        values.update(item.get("stringData") or {})
    return values


def _environment(container: Container, objects: tuple[dict[str, Any], ...]) -> dict[str, str]:
    """The container's environment as the cluster would give it: literal values, keys of the
    ConfigMaps and Secrets it names (a Secret not in the overlay: placeholders), the downward
    API as placeholders ("0" for the pod index)."""
    config_maps, secrets = _named(objects, "ConfigMap"), _named(objects, "Secret")
    sources = {"configMapRef": config_maps, "secretRef": secrets}
    environment: dict[str, str] = {}
    for source in container.spec.get("envFrom", []):
        for kind, found in sources.items():
            if kind in source:
                name = source[kind]["name"]
                assert name in found or kind == "secretRef", f"{container.name}: no {name}"
                environment.update(_data(found[name]) if name in found else {})
    for variable in container.spec.get("env", []):
        name = variable["name"]
        if "value" in variable:
            environment[name] = variable["value"]
            continue
        reference = variable["valueFrom"]
        if "configMapKeyRef" in reference:
            key = reference["configMapKeyRef"]
            environment[name] = _data(config_maps[key["name"]])[key["key"]]
        elif "secretKeyRef" in reference:
            key = reference["secretKeyRef"]
            secret = secrets.get(key["name"])
            environment[name] = (
                _data(secret)[key["key"]] if secret else SHAPED_PLACEHOLDERS.get(name, PLACEHOLDER)
            )
        elif "fieldRef" in reference:
            path = reference["fieldRef"]["fieldPath"]
            environment[name] = "0" if "pod-index" in path else PLACEHOLDER
        elif "resourceFieldRef" in reference:
            environment[name] = "1"
    return environment


def _mounted_files(
    container: Container, objects: tuple[dict[str, Any], ...], root: Path
) -> dict[str, Path]:
    """The container's ConfigMap and Secret volumes written under root: mount path -> folder.
    A Secret not in the overlay (created outside the repository) gives placeholder files."""
    volumes = {volume["name"]: volume for volume in container.pod.get("volumes", [])}
    config_maps, secrets = _named(objects, "ConfigMap"), _named(objects, "Secret")
    mounts: dict[str, Path] = {}
    for index, mount in enumerate(container.spec.get("volumeMounts", [])):
        volume = volumes[mount["name"]]
        if "configMap" in volume:
            values = _data(config_maps[volume["configMap"]["name"]])
        elif "secret" in volume:
            secret = secrets.get(volume["secret"]["secretName"])
            values = _data(secret) if secret else {"tls.crt": "", "tls.key": "", "ca.crt": ""}
        else:
            continue
        folder = root / f"mount-{index}"
        folder.mkdir(parents=True)
        for key, value in values.items():
            (folder / key).write_text(value)
        if "subPath" in mount:
            mounts[mount["mountPath"]] = folder / mount["subPath"]
        else:
            mounts[mount["mountPath"]] = folder
    return mounts


def _settings_of(
    container: Container,
    objects: tuple[dict[str, Any], ...],
    root: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> RecsysSettings:
    """load_settings over the container's environment and mounted settings file, as the
    process would run them: an unknown RECSYS_* name or TOML key fails."""
    mounts = _mounted_files(container, objects, root)
    environment = _environment(container, objects)
    for name, value in list(environment.items()):
        for mount_path, local in mounts.items():
            if value == mount_path or value.startswith(mount_path.rstrip("/") + "/"):
                environment[name] = str(local) + value[len(mount_path.rstrip("/")) :]
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    for name, value in environment.items():
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.setenv(name, value)
    try:
        return load_settings()
    except ConfigurationError as error:
        pytest.fail(f"{container.name}: {error.message}")


def _recsys_names(container: Container, objects: tuple[dict[str, Any], ...]) -> set[str]:
    return {name for name in _environment(container, objects) if name.startswith(ENV_PREFIX)}


# --- rendering and schemas -----------------------------------------------------------------


def test_every_overlay_renders_and_validates_strictly(objects: tuple[dict[str, Any], ...]) -> None:
    assert objects
    errors = []
    for version in KUBERNETES_VERSIONS:
        for item in objects:
            try:
                kubernetes_validate.validate(item, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                name = f"{item['kind']}/{item['metadata']['name']}"
                errors.append(f"{version} {name}: {error.message} at {list(error.path)}")
    assert not errors, "\n".join(errors)


def test_the_validation_is_strict() -> None:
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "x"},
        "spec": {"ports": [{"port": 1, "targetPortt": "grpc"}]},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(service, KUBERNETES_VERSIONS[0], strict=True)


# --- pods ----------------------------------------------------------------------------------


def test_every_container_has_probes_resources_and_a_restricted_security_context(
    objects: tuple[dict[str, Any], ...],
) -> None:
    problems = []
    for container in _containers(objects):
        spec, pod = container.spec, container.pod
        if container.long_running and not container.init:
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                if probe not in spec:
                    problems.append(f"{container.name}: no {probe}")
        resources = spec.get("resources", {})
        for part in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                if resource not in resources.get(part, {}):
                    problems.append(f"{container.name}: no {part}.{resource}")
        context, pod_context = spec.get("securityContext", {}), pod.get("securityContext", {})
        if not context.get("runAsNonRoot", pod_context.get("runAsNonRoot")):
            problems.append(f"{container.name}: not runAsNonRoot")
        if not context.get("readOnlyRootFilesystem"):
            problems.append(f"{container.name}: root filesystem writable")
        if context.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{container.name}: allowPrivilegeEscalation not false")
        if context.get("capabilities", {}).get("drop") != ["ALL"]:
            problems.append(f"{container.name}: capabilities not dropped")
        seccomp = context.get("seccompProfile", pod_context.get("seccompProfile", {}))
        if seccomp.get("type") != "RuntimeDefault":
            problems.append(f"{container.name}: no RuntimeDefault seccomp profile")
        if container.is_recsys:
            volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
            tmp = [m for m in spec.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
            if not tmp or "emptyDir" not in volumes[tmp[0]["name"]]:
                problems.append(f"{container.name}: no emptyDir at /tmp")
    assert not problems, "\n".join(problems)


def test_grpc_probes_ask_for_the_servers_health_names_on_a_plaintext_port(
    objects: tuple[dict[str, Any], ...], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    problems = []
    servers = 0
    for index, container in enumerate(_containers(objects)):
        probes = [
            (kind, container.spec[kind]["grpc"])
            for kind in ("startupProbe", "livenessProbe", "readinessProbe")
            if "grpc" in container.spec.get(kind, {})
        ]
        if not container.is_server:
            assert not probes, f"{container.name}: gRPC probes on a non-recsys container"
            continue
        servers += 1
        assert len(probes) == 3, f"{container.name}: every probe of a recsys server is gRPC"
        settings = _settings_of(container, objects, tmp_path / str(index), monkeypatch)
        # With TLS on the service port, the kubelet (plaintext only) probes the health port.
        port = settings.server.port
        if settings.server.tls.enabled:
            port = settings.server.health_port
            assert port, f"{container.name}: TLS without a health port"
        ports = {entry["containerPort"] for entry in container.spec.get("ports", [])}
        assert port in ports, f"{container.name}: port {port} not declared"
        wanted = {"startupProbe": LIVENESS, "livenessProbe": LIVENESS, "readinessProbe": READINESS}
        for kind, grpc in probes:
            if grpc.get("service", "") not in PROBE_NAMES:
                problems.append(f"{container.name} {kind}: unknown name {grpc.get('service')!r}")
            elif grpc.get("service") != wanted[kind]:
                problems.append(f"{container.name} {kind}: asks for {grpc.get('service')!r}")
            if grpc["port"] != port:
                problems.append(f"{container.name} {kind}: port {grpc['port']}, not {port}")
    assert servers, "no recsys server found"
    assert not problems, "\n".join(problems)


def test_grace_periods_exceed_drain_plus_grace(
    objects: tuple[dict[str, Any], ...], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for index, container in enumerate(_containers(objects)):
        if not container.is_server:
            continue
        server = _settings_of(container, objects, tmp_path / str(index), monkeypatch).server
        needed = server.shutdown_drain_seconds + server.shutdown_grace_seconds
        period = container.pod.get("terminationGracePeriodSeconds", 30)
        assert period > needed, f"{container.name}: {period} s <= drain + grace {needed} s"


def test_settings_in_environment_and_config_maps_are_settings_the_server_accepts(
    objects: tuple[dict[str, Any], ...], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checked = 0
    for index, container in enumerate(_containers(objects)):
        names = _recsys_names(container, objects)
        if not container.is_recsys:
            assert not names, f"{container.name}: RECSYS_* variables on a non-recsys container"
            continue
        _settings_of(container, objects, tmp_path / str(index), monkeypatch)
        checked += 1
    assert checked
    # Every settings file a ConfigMap carries, mounted or not, and every RECSYS_* key.
    for index, config_map in enumerate(_named(objects, "ConfigMap").values()):
        for key, value in _data(config_map).items():
            if key.endswith(".toml"):
                path = tmp_path / f"config-{index}" / key
                path.parent.mkdir(parents=True)
                path.write_text(value)
                for name in list(os.environ):
                    if name.upper().startswith(ENV_PREFIX):
                        monkeypatch.delenv(name)
                try:
                    load_settings(path)
                except ConfigurationError as error:
                    pytest.fail(f"ConfigMap {config_map['metadata']['name']}: {error.message}")


def test_the_settings_check_refuses_an_unknown_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECSYS_SERVER__PORTT", "1")
    with pytest.raises(ConfigurationError):
        load_settings()
    monkeypatch.delenv("RECSYS_SERVER__PORTT")
    path = tmp_path / "recsys.toml"
    path.write_text("[server]\nportt = 1\n")
    with pytest.raises(ConfigurationError):
        load_settings(path)


def test_recsys_containers_run_recsys_commands(objects: tuple[dict[str, Any], ...]) -> None:
    runner = CliRunner()
    for container in _containers(objects):
        if not container.is_recsys:
            continue
        args = container.spec.get("args", [])
        assert args, f"{container.name}: no command for the recsys entrypoint"
        # $(VAR) is the kubelet's expansion of the container's environment.
        declared = {variable["name"] for variable in container.spec.get("env", [])}
        for reference in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", " ".join(args)):
            assert reference in declared, f"{container.name}: $({reference}) is not declared"
        expanded = [re.sub(r"\$\([A-Za-z_][A-Za-z0-9_]*\)", "x1", arg) for arg in args]
        # Options are parsed (an unknown one fails) before --help answers.
        result = runner.invoke(app, [*expanded, "--help"])
        command = " ".join(args)
        assert result.exit_code == 0, f"{container.name}: `recsys {command}`\n{result.output}"
        if args[0] == "serve":
            services.expand([name for name in args[1].split(",") if name])


# --- shards, Services --------------------------------------------------------------------


def test_shard_ordinals_cover_every_shard_and_retrieve_lists_every_replica(
    objects: tuple[dict[str, Any], ...], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    containers = list(_containers(objects))
    shards = [c for c in containers if c.is_server and c.spec["args"][1] == "shard"]
    shard_sets = [c.workload for c in shards]
    assert shard_sets
    assert all(item["kind"] == "StatefulSet" for item in shard_sets)
    settings = _settings_of(shards[0], objects, tmp_path / "shard", monkeypatch)
    num_shards = settings.index.num_shards
    assert num_shards == 10
    services_by_name = _named(objects, "Service")
    pods: set[str] = set()
    for statefulset in shard_sets:
        name, spec = statefulset["metadata"]["name"], statefulset["spec"]
        # Ordinals 0..9 are the shard ids: the pod-index label is the ordinal.
        assert spec["replicas"] == num_shards, f"{name}: {spec['replicas']} pods"
        assert spec.get("ordinals", {}).get("start", 0) == 0
        container = next(c for c in shards if c.workload is statefulset)
        shard_id = next(v for v in container.spec["env"] if v["name"] == "RECSYS_INDEX__SHARD_ID")
        path = shard_id["valueFrom"]["fieldRef"]["fieldPath"]
        assert path == "metadata.labels['apps.kubernetes.io/pod-index']"
        assert "--shard-id" not in container.spec["args"]
        headless = services_by_name[spec["serviceName"]]
        assert headless["spec"].get("clusterIP") == "None", f"{name}: service not headless"
        selector = headless["spec"]["selector"]
        assert selector.items() <= _pod_template(statefulset)["metadata"]["labels"].items()
        port = next(p["port"] for p in headless["spec"]["ports"] if p["name"] == "grpc")
        pods |= {f"{name}-{o}.{spec['serviceName']}:{port}" for o in range(num_shards)}
    (retrieve,) = [c for c in containers if c.is_server and c.spec["args"][1] == "retrieve"]
    targets = _settings_of(retrieve, objects, tmp_path / "retrieve", monkeypatch)
    listed = targets.retrieve.shard_targets
    assert len(listed) == num_shards
    for shard, replicas in enumerate(listed):
        for target in replicas:
            assert re.fullmatch(rf"shard-[a-z]+-{shard}\.[a-z-]+:\d+", target), target
    assert {target for replicas in listed for target in replicas} == pods


def test_every_service_port_reaches_a_container_port_of_its_pods(
    objects: tuple[dict[str, Any], ...],
) -> None:
    templates = [
        _pod_template(item) for item in objects if item["kind"] in ("Deployment", "StatefulSet")
    ]
    for service in _named(objects, "Service").values():
        name, selector = service["metadata"]["name"], service["spec"].get("selector", {})
        selected = [
            t for t in templates if selector.items() <= t["metadata"].get("labels", {}).items()
        ]
        assert selected, f"Service {name} selects no pods"
        for template in selected:
            ports = [p for c in template["spec"]["containers"] for p in c.get("ports", [])]
            for port in service["spec"]["ports"]:
                target = port.get("targetPort", port["port"])
                matches = [p for p in ports if target in (p.get("name"), p["containerPort"])]
                assert matches, f"Service {name} port {port['port']}: no container port {target}"


def test_autoscalers_and_disruption_budgets_point_at_workloads(
    overlay: str, objects: tuple[dict[str, Any], ...]
) -> None:
    workloads = {(i["kind"], i["metadata"]["name"]) for i in objects}
    autoscalers = _named(objects, "HorizontalPodAutoscaler")
    for autoscaler in autoscalers.values():
        target = autoscaler["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) in workloads
    templates = [_pod_template(i) for i in objects if i["kind"] in ("Deployment", "StatefulSet")]
    for budget in _named(objects, "PodDisruptionBudget").values():
        selector = budget["spec"]["selector"]["matchLabels"]
        assert any(selector.items() <= t["metadata"]["labels"].items() for t in templates)
    if overlay == "prod":  # seed Simulation 5: ranking 20 -> 50
        rank = autoscalers["rank"]["spec"]
        assert (rank["minReplicas"], rank["maxReplicas"]) == (20, 50)
    if overlay != "dev":
        assert {"recommend", "rank"} <= autoscalers.keys()


def test_the_health_port_is_used_exactly_where_tls_is_on(
    objects: tuple[dict[str, Any], ...], overlay: str
) -> None:
    for container in _containers(objects):
        if not container.is_server:
            continue
        environment = _environment(container, objects)
        tls = "RECSYS_SERVER__TLS__CERT_FILE" in environment
        assert tls == (overlay != "dev"), f"{container.name}: mTLS only off in dev"
        assert ("RECSYS_SERVER__HEALTH_PORT" in environment) == tls


def test_the_container_image_installs_what_make_install_installs() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert "pip install --quiet --upgrade pip setuptools wheel" in makefile
    assert "pip install --quiet -c constraints.txt -e clients/python -e '.[" in makefile
    assert "pip install --quiet --upgrade pip setuptools wheel" in dockerfile
    assert "pip install --quiet -c constraints.txt ./clients/python '.[cpu]'" in dockerfile
    assert 'ENTRYPOINT ["recsys"]' in dockerfile
    assert "USER 10001:10001" in dockerfile
