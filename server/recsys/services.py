"""Which services a process can host, by short name (`recsys serve NAME`).

Builders are dotted paths imported on first use, like adapters in `recsys.registry`. Each gets
the process's `Components` (`recsys.composition`): the settings (release applied), the exit
stack for resources, the metrics registry, the shared adapters, the objects other hosted
services built, and hooks to run once the server listens (index loading) or tasks to keep
running (watchers).
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable, Sequence
from typing import cast

from recsys.composition import Components
from recsys.errors import ConfigurationError
from recsys.grpc_server.app import GrpcApplication, ServiceBinding
from recsys.settings import RecsysSettings

ServiceBuilder = Callable[[Components], Awaitable[list[ServiceBinding]]]

SERVICES: dict[str, str] = {
    "recommend": "recsys.servicers.recommend:build",
    "ingest": "recsys.servicers.ingest:build",
    "retrieve": "recsys.servicers.retrieve:build",
    "shard": "recsys.servicers.index_shard:build",
    "rank": "recsys.servicers.rank:build",
    # The event consumer worker (no recsys API: health and metrics only).
    "consume": "recsys.events.service:build",
}

# The embedded mode hosts these in one process, wired in-process (Retrieve over in-process
# shards, no network hop).
EMBEDDED = ("retrieve", "rank", "ingest", "recommend")


def service_names() -> list[str]:
    return [*SERVICES, "embedded"]


def expand(names: Sequence[str]) -> list[str]:
    """Resolves `embedded` and checks every name; ConfigurationError on an unknown one."""
    expanded: list[str] = []
    for name in names:
        members = EMBEDDED if name == "embedded" else (name,)
        for member in members:
            if member not in SERVICES:
                raise ConfigurationError(
                    f"unknown service {member!r}; choose from {', '.join(service_names())}"
                )
            if member not in expanded:
                expanded.append(member)
    return expanded


def _builder(name: str) -> ServiceBuilder:
    module_name, _, attribute = SERVICES[name].partition(":")
    return cast(ServiceBuilder, getattr(importlib.import_module(module_name), attribute))


async def build_application(settings: RecsysSettings, names: Sequence[str]) -> GrpcApplication:
    """Builds (without starting) a server process hosting the named services."""
    components = Components(settings)
    bindings: list[ServiceBinding] = []
    try:
        for name in expand(names):
            bindings.extend(await _builder(name)(components))
        components.monitor_dependencies()
    except BaseException:
        await components.resources.aclose()
        raise
    return GrpcApplication(
        components.settings,
        bindings,
        resources=components.resources,
        registry=components.registry,
        startup_hooks=components.startup_hooks,
        components=components,
    )
