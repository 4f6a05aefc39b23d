"""A local harness for the rendered Kubernetes manifests: every recsys workload of an overlay
run as local processes, exactly as its container says (the image's entrypoint `recsys` with the
container's args, its environment, its mounted ConfigMaps and Secrets), with what only a cluster
has mapped to local stand-ins:

- container ports -> free loopback ports (the values in the manifest that name a declared
  container port are rewritten: the health port variable, the TOML's ports; hosts -> 127.0.0.1);
- volumes -> folders (ConfigMaps and Secrets written as files, a PersistentVolumeClaim one
  folder shared by every pod, an emptyDir one folder per pod); mount paths in env values, args
  and the mounted TOML are rewritten to the folders;
- Service names (`svc`, `svc.ns`, `svc.ns.svc[.cluster.local]`, `pod.headless-svc[...]`) in env
  values and the TOML -> 127.0.0.1:<the local port of the selected pod's target port>;
- TLS Secrets -> certificates of a test CA: the server Secret a certificate for 127.0.0.1, each
  `recsys-client-<caller>` Secret a client certificate with the SAN URI of the internal caller
  `.../<caller>` the rendered auth settings list;
- the external services (Redis, PostgreSQL, Kafka) -> the local ones (a Redis namespace and a
  PostgreSQL schema of the run's own, a test broker); PgBouncer is not run (the database URL
  points straight at PostgreSQL), Triton is stood in for by MLServer (KServe V2, the same ONNX
  model) on the triton pod's ports.

Probes are run as the kubelet runs them (gRPC health Check on the probe's port and service name,
plaintext; HTTP GET; TCP connect)."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from recsys.deploy.ports import free_ports_below_ephemeral
from tests.k8s.test_manifests import Container, _containers, _data, _named, _pod_template
from tests.support.certificates import CertificateAuthority, Pair

RECSYS = str(Path(sys.executable).with_name("recsys"))
# Added to every probe's budget (failureThreshold x periodSeconds): a 2-core machine starting
# a dozen Python processes at once is far slower than a node.
PROBE_SLACK_SECONDS = 45.0
# Readiness has no deadline in Kubernetes (the pod just gets no traffic): the harness gives it
# this long after the startup probe passed.
READINESS_BUDGET_SECONDS = 60.0
HOST_LABEL = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?"
ADDRESS = re.compile(rf"(?<![-A-Za-z0-9.@/])({HOST_LABEL}(?:\.{HOST_LABEL})*):(\d+)\b")
VARIABLE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


class HarnessError(AssertionError):
    """A manifest the harness cannot run as written (a wrong reference, port or name)."""


@dataclass
class Externals:
    """The local stand-ins of the services outside the cluster."""

    redis_url: str
    redis_namespace: str
    database_url: str
    database_schema: str
    kafka_bootstrap: str


@dataclass
class Pod:
    name: str
    container: Container
    ordinal: int
    folder: Path
    ports: dict[int, int]  # container port -> local port
    port_names: dict[str, int]  # port name -> container port
    argv: list[str] = field(default_factory=list)
    environment: dict[str, str] = field(default_factory=dict)
    config_files: list[Path] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    log: Path | None = None

    @property
    def workload(self) -> str:
        return str(self.container.workload["metadata"]["name"])

    def local(self, port: int | str) -> int:
        """The local port of a container port given by number or name."""
        number = self.port_names.get(port, port) if isinstance(port, str) else port
        if isinstance(number, str) and number.isdigit():
            number = int(number)
        if number not in self.ports:
            raise HarnessError(f"{self.name}: port {port!r} is not a declared container port")
        return self.ports[int(number)]

    def tail(self, characters: int = 4000) -> str:
        if self.log is None or not self.log.exists():
            return ""
        return self.log.read_text(errors="replace")[-characters:]


class Cluster:
    """The rendered objects of one overlay, laid out as local pods."""

    def __init__(self, objects: tuple[dict[str, Any], ...], root: Path) -> None:
        self.objects = objects
        self.root = root
        self.namespace = next(
            (o["metadata"].get("namespace") for o in objects if o["metadata"].get("namespace")),
            "default",
        )
        self.services = _named(objects, "Service")
        self.config_maps = _named(objects, "ConfigMap")
        self.secrets = _named(objects, "Secret")
        self.containers = [c for c in _containers(objects) if not c.init]
        self.pods: list[Pod] = []
        # Below the ephemeral range: 14 processes binding and connecting while the layout
        # starts would otherwise race for ports picked with free_port (seen in CI).
        self.free_ports = free_ports_below_ephemeral()
        # Pods that stand in for the pods of a workload not run (name -> pod run instead).
        self.stand_ins: dict[str, Pod] = {}
        self.authority = CertificateAuthority(_mkdir(root / "ca"))
        self._server_pair = self.authority.issue("recsys-server", server=True)
        self._claims: dict[str, Path] = {}

    # --- layout -------------------------------------------------------------------------

    def workload_container(self, name: str, kind: str | None = None) -> Container:
        for container in self.containers:
            metadata = container.workload["metadata"]
            if metadata["name"] == name and kind in (None, container.workload["kind"]):
                return container
        raise HarnessError(f"no workload {name}")

    def add_pods(self, container: Container, ordinals: Iterable[int]) -> list[Pod]:
        added = []
        for ordinal in ordinals:
            workload = container.workload["metadata"]["name"]
            name = f"{workload}-{ordinal}"
            declared = container.spec.get("ports", [])
            pod = Pod(
                name=name,
                container=container,
                ordinal=ordinal,
                folder=_mkdir(self.root / "pods" / name),
                ports={entry["containerPort"]: next(self.free_ports) for entry in declared},
                port_names={e["name"]: e["containerPort"] for e in declared if "name" in e},
            )
            self.pods.append(pod)
            added.append(pod)
        return added

    def add_stand_in(self, name: str, pod: Pod) -> None:
        self.stand_ins[name] = pod

    def pod(self, name: str) -> Pod:
        for pod in self.pods:
            if pod.name == name:
                return pod
        if name in self.stand_ins:
            return self.stand_ins[name]
        raise HarnessError(f"no pod {name}")

    # --- addresses ----------------------------------------------------------------------

    def _selected(self, service: dict[str, Any]) -> list[Pod]:
        selector = service["spec"].get("selector", {})
        pods = list(self.pods) + list(self.stand_ins.values())
        return [p for p in pods if selector.items() <= p.container.pod_labels.items()]

    def _hosts(self, name: str) -> list[str]:
        ns = self.namespace
        return [name, f"{name}.{ns}", f"{name}.{ns}.svc", f"{name}.{ns}.svc.cluster.local"]

    def resolve(self, host: str, port: int) -> int | None:
        """The local port that host:port reaches in the cluster; None when host is no name of
        the cluster (an external address); HarnessError when it is a cluster name that does not
        lead to a declared port."""
        for service_name, service in self.services.items():
            if host in self._hosts(service_name):
                if service["spec"].get("clusterIP") == "None":
                    raise HarnessError(f"{host}:{port}: a headless Service has no address")
                entries = [p for p in service["spec"]["ports"] if p["port"] == port]
                if not entries:
                    raise HarnessError(f"{host}:{port}: Service {service_name} has no port {port}")
                selected = self._selected(service)
                if not selected:
                    raise HarnessError(f"{host}:{port}: Service {service_name} selects no pod")
                target = entries[0].get("targetPort", port)
                return selected[0].local(target)
            if service["spec"].get("clusterIP") == "None":
                for pod in [*self.pods, *self.stand_ins.values()]:
                    names = {pod.name, *self.stand_ins_named(pod)}
                    for pod_name in names:
                        if host in self._hosts(f"{pod_name}.{service_name}"):
                            if pod not in self._selected(service):
                                raise HarnessError(f"{host}: not behind Service {service_name}")
                            return pod.local(port)
        first = host.split(".")[0]
        if first in self.services or any(
            first == f"{c.workload['metadata']['name']}-{i}"
            for c in self.containers
            for i in range(int(c.workload["spec"].get("replicas", 1)))
        ):
            raise HarnessError(f"{host}:{port}: not an address of the cluster")
        return None

    def stand_ins_named(self, pod: Pod) -> list[str]:
        return [name for name, other in self.stand_ins.items() if other is pod]

    def rewrite_addresses(self, text: str) -> str:
        def replace(match: re.Match[str]) -> str:
            local = self.resolve(match.group(1), int(match.group(2)))
            return match.group(0) if local is None else f"127.0.0.1:{local}"

        return ADDRESS.sub(replace, text)

    # --- volumes ------------------------------------------------------------------------

    def _secret_files(self, pod: Pod, secret_name: str) -> dict[str, bytes]:
        if secret_name in self.secrets:
            return {k: v.encode() for k, v in _data(self.secrets[secret_name]).items()}
        ca = self.authority.pair.cert.read_bytes()
        if secret_name == "recsys-server-tls":
            pair = self._server_pair
        elif secret_name.startswith("recsys-client-"):
            caller = secret_name.removeprefix("recsys-client-")
            callers = json.loads(self._variable(pod, "RECSYS_AUTH__INTERNAL_CALLERS") or "[]")
            uris = [uri for uri in callers if uri.rsplit("/", 1)[-1] == caller]
            if not uris:
                raise HarnessError(f"{pod.name}: {secret_name}, no internal caller .../{caller}")
            pair = self.authority.issue_client(f"client-{caller}", uris=(uris[0],))
        else:
            raise HarnessError(
                f"{pod.name}: Secret {secret_name} is neither in the overlay nor TLS"
            )
        return _tls_files(pair, ca)

    def _variable(self, pod: Pod, name: str) -> str | None:
        return self._raw_environment(pod).get(name)

    def mount(self, pod: Pod) -> dict[str, Path]:
        """Writes the pod's volumes; mount path -> local path."""
        volumes = {v["name"]: v for v in pod.container.pod.get("volumes", [])}
        mounts: dict[str, Path] = {}
        for mount in pod.container.spec.get("volumeMounts", []):
            if mount["name"] not in volumes:
                raise HarnessError(f"{pod.name}: no volume {mount['name']}")
            volume = volumes[mount["name"]]
            folder = pod.folder / "volumes" / mount["name"]
            if "configMap" in volume:
                name = volume["configMap"]["name"]
                if name not in self.config_maps:
                    raise HarnessError(f"{pod.name}: no ConfigMap {name}")
                files = {k: v.encode() for k, v in _data(self.config_maps[name]).items()}
                _write_files(folder, files)
            elif "secret" in volume:
                _write_files(folder, self._secret_files(pod, volume["secret"]["secretName"]))
            elif "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                claims = _named(self.objects, "PersistentVolumeClaim")
                if claim not in claims:
                    raise HarnessError(f"{pod.name}: no PersistentVolumeClaim {claim}")
                folder = self.claim(claim)
            elif "emptyDir" in volume:
                folder.mkdir(parents=True, exist_ok=True)
            else:
                raise HarnessError(f"{pod.name}: volume {mount['name']} of an unknown kind")
            local = folder / mount["subPath"] if "subPath" in mount else folder
            mounts[mount["mountPath"]] = local
        return mounts

    def claim(self, name: str) -> Path:
        if name not in self._claims:
            self._claims[name] = _mkdir(self.root / "claims" / name)
        return self._claims[name]

    # --- environment ----------------------------------------------------------------------

    def _raw_environment(self, pod: Pod) -> dict[str, str]:
        """The environment as the kubelet builds it (before any local mapping)."""
        spec = pod.container.spec
        environment: dict[str, str] = {}
        for source in spec.get("envFrom", []):
            if "configMapRef" in source:
                name = source["configMapRef"]["name"]
                if name not in self.config_maps:
                    raise HarnessError(f"{pod.name}: envFrom, no ConfigMap {name}")
                environment.update(_data(self.config_maps[name]))
            elif "secretRef" in source:
                name = source["secretRef"]["name"]
                if name in self.secrets:
                    environment.update(_data(self.secrets[name]))
        for variable in spec.get("env", []):
            name = variable["name"]
            if "value" in variable:
                environment[name] = VARIABLE.sub(
                    lambda m: environment.get(m.group(1), m.group(0)), variable["value"]
                )
                continue
            reference = variable["valueFrom"]
            if "configMapKeyRef" in reference:
                key = reference["configMapKeyRef"]
                data = _data(self.config_maps.get(key["name"]) or {"kind": "ConfigMap"})
                if key["key"] not in data:
                    raise HarnessError(f"{pod.name}: {name}, no {key['name']}/{key['key']}")
                environment[name] = data[key["key"]]
            elif "secretKeyRef" in reference:
                key = reference["secretKeyRef"]
                secret = self.secrets.get(key["name"])
                # A Secret created outside the repository: the external mapping fills it in.
                environment[name] = _data(secret)[key["key"]] if secret else ""
            elif "fieldRef" in reference:
                path = reference["fieldRef"]["fieldPath"]
                if path == "metadata.labels['apps.kubernetes.io/pod-index']":
                    if pod.container.workload["kind"] != "StatefulSet":
                        raise HarnessError(f"{pod.name}: pod-index outside a StatefulSet")
                    environment[name] = str(pod.ordinal)
                elif path == "metadata.name":
                    environment[name] = pod.name
                elif path == "metadata.namespace":
                    environment[name] = self.namespace
                elif path in ("status.podIP", "status.hostIP"):
                    environment[name] = "127.0.0.1"
                else:
                    raise HarnessError(f"{pod.name}: {name}, unsupported fieldRef {path}")
            elif "resourceFieldRef" in reference:
                resource = reference["resourceFieldRef"]["resource"]
                part, _, kind = resource.partition(".")
                value = str(spec.get("resources", {}).get(part, {}).get(kind, ""))
                if kind != "cpu" or not value:
                    raise HarnessError(f"{pod.name}: {name}, no {resource}")
                cores = float(value[:-1]) / 1000 if value.endswith("m") else float(value)
                environment[name] = str(max(1, int(-(-cores // 1))))
        return environment

    def prepare(self, pod: Pod, externals: Externals) -> None:
        """The pod's command line, environment and files, mapped to this machine."""
        mounts = self.mount(pod)
        environment = self._raw_environment(pod)

        # One pass over every mount path (longest first), so a local folder (under /tmp
        # itself) is never rewritten again.
        paths = sorted((m.rstrip("/") for m in mounts), key=len, reverse=True)
        pattern = re.compile(
            r"(?<![A-Za-z0-9_./-])(" + "|".join(re.escape(m) for m in paths) + r")(?=/|\b|$)"
        )
        by_path = {m.rstrip("/"): str(local) for m, local in mounts.items()}

        def local_paths(text: str) -> str:
            if not paths:
                return text
            return pattern.sub(lambda match: by_path[match.group(1)], text)

        def local_ports(text: str, *, keys: bool) -> str:
            if not keys:
                return (
                    str(pod.ports[int(text)]) if text.isdigit() and int(text) in pod.ports else text
                )

            def replace(match: re.Match[str]) -> str:
                number = int(match.group(2))
                return match.group(1) + str(pod.ports.get(number, number))

            text = re.sub(r"(?m)^(\s*(?:port|health_port|metrics_port)\s*=\s*)(\d+)", replace, text)
            return re.sub(r'(?m)^(\s*host\s*=\s*)"0\.0\.0\.0"', r'\1"127.0.0.1"', text)

        # Files the pod reads settings from: the mounted TOML (a copy per pod).
        for local in mounts.values():
            for path in local.rglob("*.toml") if local.is_dir() else []:
                text = path.read_text()
                path.write_text(local_ports(self.rewrite_addresses(local_paths(text)), keys=True))
                pod.config_files.append(path)
        mapped: dict[str, str] = {}
        for name, value in environment.items():
            value = local_paths(value)
            if name.endswith("_PORT"):
                value = local_ports(value, keys=False)
            if name == "RECSYS_KAFKA__BOOTSTRAP_SERVERS":
                value = externals.kafka_bootstrap
            elif name == "RECSYS_REDIS__URL":
                value = externals.redis_url
            elif name == "RECSYS_DATABASE__URL":
                value = externals.database_url  # PgBouncer skipped: PostgreSQL itself
            else:
                value = self.rewrite_addresses(value)
            mapped[name] = value
        if any(name.startswith("RECSYS_") for name in mapped):
            mapped["RECSYS_REDIS__NAMESPACE"] = externals.redis_namespace
            mapped["RECSYS_DATABASE__SCHEMA_NAME"] = externals.database_schema
        base = {
            key: os.environ[key] for key in ("PATH", "HOME", "LANG", "LC_ALL") if key in os.environ
        }
        if "/tmp" in mounts:
            base["TMPDIR"] = str(mounts["/tmp"])
        pod.environment = {**base, **mapped}
        spec = pod.container.spec
        command = spec.get("command") or [RECSYS]
        args = [
            local_paths(VARIABLE.sub(lambda m: mapped.get(m.group(1), m.group(0)), arg))
            for arg in spec.get("args", [])
        ]
        pod.argv = [*command, *args]

    # --- processes ----------------------------------------------------------------------

    def start(self, pod: Pod) -> None:
        pod.log = pod.folder / "process.log"
        handle = open(pod.log, "ab")  # noqa: SIM115 - closed by the process's exit
        pod.process = subprocess.Popen(
            pod.argv,
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=pod.environment,
            cwd=pod.folder,
        )
        handle.close()
        pod.started_at = time.monotonic()

    def stop_all(self) -> None:
        running = [p for p in self.pods if p.process is not None and p.process.poll() is None]
        for pod in running:
            assert pod.process is not None
            pod.process.terminate()
        deadline = time.monotonic() + 20
        for pod in running:
            assert pod.process is not None
            try:
                pod.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pod.process.kill()
                pod.process.wait()


# --- probes ------------------------------------------------------------------------------


def probe_once(pod: Pod, probe: dict[str, Any], *, slack: float = 2.0) -> str | None:
    """Runs one probe as the kubelet would; None when it passes, else why not."""
    timeout = float(probe.get("timeoutSeconds", 1)) + slack
    if "grpc" in probe:
        port = pod.local(probe["grpc"]["port"])
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            try:
                answer = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=probe["grpc"].get("service", "")),
                    timeout=timeout,
                )
            except grpc.RpcError as error:
                return f"{error.code().name}: {error.details()}"
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
        return None if status == "SERVING" else status
    if "httpGet" in probe:
        get = probe["httpGet"]
        url = f"http://127.0.0.1:{pod.local(get['port'])}{get.get('path', '/')}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                return None if 200 <= response.status < 400 else f"HTTP {response.status}"
        except (urllib.error.URLError, OSError) as error:
            return str(error)
    if "tcpSocket" in probe:
        try:
            with socket.create_connection(
                ("127.0.0.1", pod.local(probe["tcpSocket"]["port"])), timeout=timeout
            ):
                return None
        except OSError as error:
            return str(error)
    raise HarnessError(f"{pod.name}: a probe the harness does not run: {sorted(probe)}")


def wait_for_probe(pod: Pod, kind: str, *, since: float, budget: float | None = None) -> float:
    """Repeats the pod's probe of this kind until it passes; its budget is the probe's
    failureThreshold x periodSeconds (+ initialDelaySeconds) plus the harness's slack. Returns
    the seconds it took from `since`."""
    probe = pod.container.spec.get(kind)
    if probe is None:
        raise HarnessError(f"{pod.name}: no {kind}")
    period = float(probe.get("periodSeconds", 10))
    if budget is None:
        budget = (
            float(probe.get("initialDelaySeconds", 0))
            + float(probe.get("failureThreshold", 3)) * period
            + PROBE_SLACK_SECONDS
        )
    deadline = since + budget
    why = "not run"
    while True:
        if pod.process is not None and pod.process.poll() is not None:
            raise HarnessError(
                f"{pod.name} exited ({pod.process.returncode}) before its {kind} passed:\n"
                + pod.tail()
            )
        why = probe_once(pod, probe) or ""
        if not why:
            return time.monotonic() - since
        if time.monotonic() > deadline:
            raise HarnessError(
                f"{pod.name}: {kind} {json.dumps(probe)} did not pass in {budget:.0f} s "
                f"(last: {why})\n{pod.tail()}"
            )
        time.sleep(min(period, 0.5))


# --- helpers -----------------------------------------------------------------------------


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _write_files(folder: Path, files: dict[str, bytes]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for key, value in files.items():
        (folder / key).write_bytes(value)


def _tls_files(pair: Pair, ca: bytes) -> dict[str, bytes]:
    return {"tls.crt": pair.cert.read_bytes(), "tls.key": pair.key.read_bytes(), "ca.crt": ca}


def copy_tree(source: Path, target: Path) -> None:
    shutil.copytree(source, target, dirs_exist_ok=True)


__all__ = [
    "Cluster",
    "Externals",
    "HarnessError",
    "Pod",
    "_pod_template",
    "probe_once",
    "wait_for_probe",
]
