"""Which services a process can host, by short name (`recsys serve NAME`).

Builders are dotted paths imported on first use, like adapters in `recsys.registry`.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Awaitable, Callable, Sequence
from typing import cast

from recsys.errors import ConfigurationError
from recsys.grpc_server.app import GrpcApplication, ServiceBinding
from recsys.settings import RecsysSettings

ServiceBuilder = Callable[
    [RecsysSettings, contextlib.AsyncExitStack], Awaitable[list[ServiceBinding]]
]

SERVICES: dict[str, str] = {
    "recommend": "recsys.servicers.recommend:build",
    "ingest": "recsys.servicers.ingest:build",
}

# The embedded mode hosts these in one process, wired in-process.
EMBEDDED = ("recommend", "ingest")


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
    resources = contextlib.AsyncExitStack()
    bindings: list[ServiceBinding] = []
    try:
        for name in expand(names):
            bindings.extend(await _builder(name)(settings, resources))
    except BaseException:
        await resources.aclose()
        raise
    return GrpcApplication(settings, bindings, resources=resources)
