"""Which services a process can host, by short name (`recsys serve NAME`).

Builders are dotted paths imported on first use, like adapters in `recsys.registry`. Each gets a
`ServiceContext`: the settings, an exit stack for resources, the process's metrics registry, and
hooks to run once the server listens (index loading) or tasks to keep running (watchers).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from prometheus_client import CollectorRegistry

from recsys.errors import ConfigurationError
from recsys.grpc_server.app import GrpcApplication, ServiceBinding
from recsys.settings import RecsysSettings


@dataclass
class ServiceContext:
    settings: RecsysSettings
    resources: contextlib.AsyncExitStack
    registry: CollectorRegistry
    startup_hooks: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    # Objects shared between services of one process (e.g. the feature store in embedded mode).
    shared: dict[str, Any] = field(default_factory=dict)

    def shared_object(self, name: str, factory: Callable[[], Any]) -> Any:
        """One object per process under `name` (feature store, breaker metrics...)."""
        if name not in self.shared:
            self.shared[name] = factory()
        return self.shared[name]

    def run_in_background(self, factory: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Starts the coroutine once the server is ready; cancels it at shutdown."""

        async def start() -> None:
            task = asyncio.create_task(factory())

            async def stop() -> None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

            self.resources.push_async_callback(stop)

        self.startup_hooks.append(start)


ServiceBuilder = Callable[[ServiceContext], Awaitable[list[ServiceBinding]]]

SERVICES: dict[str, str] = {
    "recommend": "recsys.servicers.recommend:build",
    "ingest": "recsys.servicers.ingest:build",
    "retrieve": "recsys.servicers.retrieve:build",
    "shard": "recsys.servicers.index_shard:build",
    "rank": "recsys.servicers.rank:build",
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
    context = ServiceContext(
        settings=settings, resources=contextlib.AsyncExitStack(), registry=CollectorRegistry()
    )
    bindings: list[ServiceBinding] = []
    try:
        for name in expand(names):
            bindings.extend(await _builder(name)(context))
    except BaseException:
        await context.resources.aclose()
        raise
    return GrpcApplication(
        settings,
        bindings,
        resources=context.resources,
        registry=context.registry,
        startup_hooks=context.startup_hooks,
        components=context.shared,
    )
