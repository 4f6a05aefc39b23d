"""A recsys gRPC server process: services, health, reflection, metrics and graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from recsys.errors import ConfigurationError
from recsys.grpc_server.admission import AdmissionController, CallerLimits
from recsys.grpc_server.auth import auth_interceptor
from recsys.grpc_server.decoding import DecodingServer
from recsys.grpc_server.health import HealthServicer, list_handler
from recsys.grpc_server.interceptors import server_interceptors
from recsys.grpc_server.reflection import REFLECTION_SERVICE, enable_reflection
from recsys.observability.dependencies import DependencyState
from recsys.observability.metrics import (
    GrpcServerMetrics,
    MetricsEndpoint,
    start_metrics_endpoint,
)
from recsys.settings import RecsysSettings, TlsSettings

if TYPE_CHECKING:
    from recsys.composition import Components

logger = logging.getLogger(__name__)

# Health service names for Kubernetes probes (`grpc: {port, service}` in the pod spec).
LIVENESS = "liveness"
READINESS = "readiness"
OVERALL = ""
# One name per dependency the process checks (`dependency.feature_store`...): SERVING while it
# answers, NOT_SERVING while it is down. Neither liveness nor readiness follows them.
DEPENDENCY_PREFIX = "dependency."

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

T = TypeVar("T")


def run_event_loop(
    main: Coroutine[Any, Any, T], event_loop: Literal["asyncio", "uvloop"] = "asyncio"
) -> T:
    """Runs a serving process's main coroutine on the configured loop (`server.event_loop`).
    grpc.aio, redis-py and SQLAlchemy's async drivers run on uvloop as on asyncio's loop; uvloop
    spends less per callback and per socket read (bench/recommend.py measures both)."""
    if event_loop == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)


@dataclass(frozen=True)
class ServiceBinding:
    """A servicer to host: its full proto service name and how to add it to a server."""

    name: str
    add_to_server: Callable[[grpc.aio.Server], None]


def server_options(settings: RecsysSettings) -> list[tuple[str, int]]:
    """Channel arguments of every recsys server."""
    server = settings.server
    return [
        ("grpc.max_receive_message_length", server.max_receive_message_bytes),
        ("grpc.max_send_message_length", server.max_send_message_bytes),
        ("grpc.keepalive_time_ms", server.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", server.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", server.min_client_ping_interval_ms),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.max_connection_age_ms", server.max_connection_age_ms),
        ("grpc.max_connection_age_grace_ms", server.max_connection_age_grace_ms),
        # A port already in use is an error, not a silently shared listener, unless replicas
        # share it on purpose (`recsys up`).
        ("grpc.so_reuseport", 1 if server.reuse_port else 0),
    ]


def server_credentials(tls: TlsSettings) -> grpc.ServerCredentials:
    assert tls.cert_file is not None
    assert tls.key_file is not None
    try:
        key, chain = tls.key_file.read_bytes(), tls.cert_file.read_bytes()
        client_ca = tls.client_ca_file.read_bytes() if tls.client_ca_file else None
    except OSError as error:
        raise ConfigurationError(f"cannot read TLS files: {error}") from error
    return grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=client_ca, require_client_auth=tls.require_client_auth
    )


class GrpcApplication:
    """One server process hosting some recsys services.

    Lifecycle: `start()` binds and serves, marking every service SERVING; `shutdown()` marks
    readiness NOT_SERVING first, keeps serving for the drain period, then stops accepting calls
    and lets in-flight ones finish within the grace period, then closes `resources`.
    """

    def __init__(
        self,
        settings: RecsysSettings,
        bindings: Sequence[ServiceBinding],
        *,
        generic_handlers: Sequence[grpc.GenericRpcHandler] = (),
        resources: contextlib.AsyncExitStack | None = None,
        registry: CollectorRegistry | None = None,
        startup_hooks: Sequence[Callable[[], Awaitable[None]]] = (),
        components: Components | None = None,
    ) -> None:
        self.settings = settings
        self.bindings = tuple(bindings)
        self.registry = registry or CollectorRegistry()
        self._startup_hooks = tuple(startup_hooks)
        # What the services were built from (feature store, retriever...); None for an
        # application assembled from bindings alone.
        self.components = components
        self.metrics = GrpcServerMetrics(self.registry)
        self.health = HealthServicer()
        self.port: int | None = None
        # The plaintext health-only port (`server.health_port`), once bound.
        self.health_port: int | None = None
        self._health_server: grpc.aio.Server | None = None
        self.metrics_endpoint: MetricsEndpoint | None = None
        self._generic_handlers = tuple(generic_handlers)
        self._resources = resources or contextlib.AsyncExitStack()
        self._server: grpc.aio.Server | None = None
        self._shutdown_started = False
        self._startup_done = False
        self._terminated = asyncio.Event()
        if components is not None:
            components.dependencies.add_listener(self._publish_dependency)

    async def _publish_dependency(self, state: DependencyState) -> None:
        await self.health.set(DEPENDENCY_PREFIX + state.name, SERVING if state.up else NOT_SERVING)
        components = self.components
        if (
            components is not None
            and state.name in components.dependencies.readiness_gates
            and self._startup_done
            and not self._shutdown_started
        ):
            await self._publish_readiness()

    async def _publish_readiness(self) -> None:
        """Each service is ready unless a dependency gating it (or the whole process) is down;
        the process is ready while one of its services is (a broker outage takes IngestService
        out, not the RecommendService beside it)."""
        process_up, services_down = True, set[str]()
        if self.components is not None:
            process_up, services_down = self.components.dependencies.gated_state()
        services = {name: process_up and name not in services_down for name in self.service_names}
        ready = process_up and (not services or any(services.values()))
        for name, up in services.items():
            await self.health.set(name, SERVING if up else NOT_SERVING)
        for name in (OVERALL, READINESS):
            await self.health.set(name, SERVING if ready else NOT_SERVING)
        self.metrics.ready.set(1 if ready else 0)

    @property
    def service_names(self) -> list[str]:
        return [binding.name for binding in self.bindings]

    @property
    def address(self) -> str:
        if self.port is None:
            raise RuntimeError("the server is not started")
        return f"{self.settings.server.host}:{self.port}"

    async def start(self) -> int:
        """Binds, starts serving and returns the bound port."""
        settings = self.settings.server
        auth = auth_interceptor(self.settings)
        # Per caller only where callers are known: with authentication off, every call would
        # be one peer address or another, not a caller (a proxy's address stands for many).
        caller_limit = settings.caller_in_flight_limit if auth is not None else 0
        server = grpc.aio.server(
            interceptors=server_interceptors(
                self.metrics,
                access_log=self.settings.logging.access_log,
                default_deadline_seconds=settings.default_deadline_ms / 1000,
                max_deadline_seconds=settings.max_deadline_ms / 1000,
                auth=auth,
                caller_limits=(
                    CallerLimits(
                        limit=caller_limit,
                        exempt=frozenset(self.settings.auth.internal_callers),
                        max_wait_seconds=settings.max_queue_wait_ms / 1000,
                        retry_after_seconds=settings.overload_retry_after_ms / 1000,
                    )
                    if caller_limit > 0
                    else None
                ),
                admission=(
                    AdmissionController(
                        max_in_flight=settings.max_in_flight,
                        max_queue=settings.max_queue,
                        max_queue_wait_seconds=settings.max_queue_wait_ms / 1000,
                        retry_after_seconds=settings.overload_retry_after_ms / 1000,
                    )
                    if settings.admission_enabled
                    else None
                ),
            ),
            options=server_options(self.settings),
            maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
        )
        # The services' requests that do not decode reach the interceptors as InvalidArgument
        # (grpc_server/decoding.py); health and reflection are gRPC's own.
        services = DecodingServer(server)
        for binding in self.bindings:
            binding.add_to_server(services)
        if self._generic_handlers:
            services.add_generic_rpc_handlers(self._generic_handlers)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        server.add_generic_rpc_handlers([list_handler(self.health)])
        if settings.reflection:
            enable_reflection(
                server,
                [
                    *self.service_names,
                    health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                    REFLECTION_SERVICE,
                ],
            )
        address = f"{settings.host}:{settings.port}"
        try:
            if settings.tls.enabled:
                port: int = server.add_secure_port(address, server_credentials(settings.tls))
            else:
                port = server.add_insecure_port(address)
        except RuntimeError as error:
            raise ConfigurationError(f"cannot listen on {address}: {error}") from error
        if port == 0:
            raise ConfigurationError(f"cannot listen on {address}")
        await server.start()
        self._server = server
        self.port = port
        if settings.health_port is not None:
            await self._start_health_port(settings.host, settings.health_port)
        if self.settings.metrics.enabled:
            self.metrics_endpoint = start_metrics_endpoint(
                self.registry, self.settings.metrics.host, self.settings.metrics.port
            )
        # Alive while loading; ready (and routable) only once the startup hooks are done.
        await self.health.set(LIVENESS, SERVING)
        for name in (OVERALL, READINESS, *self.service_names):
            await self.health.set(name, NOT_SERVING)
        for hook in self._startup_hooks:
            await hook()
        self._startup_done = True
        # A dependency that gates readiness (the broker of ingest and consume processes) makes
        # the process ready once its probe answers.
        await self._publish_readiness()
        logger.info(
            "grpc server listening",
            extra={"address": f"{settings.host}:{port}", "services": self.service_names},
        )
        return port

    async def _start_health_port(self, host: str, port: int) -> None:
        """The plaintext health-only server (settings `server.health_port`): the same health
        statuses as the service port, and no other service, no reflection, no credentials."""
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        server.add_generic_rpc_handlers([list_handler(self.health)])
        address = f"{host}:{port}"
        try:
            bound = server.add_insecure_port(address)
        except RuntimeError as error:
            raise ConfigurationError(
                f"cannot listen on {address} (health port): {error}"
            ) from error
        if bound == 0:
            raise ConfigurationError(f"cannot listen on {address} (health port)")
        await server.start()
        self._health_server = server
        self.health_port = bound
        logger.info("grpc health port listening", extra={"address": f"{host}:{bound}"})

    async def shutdown(self) -> None:
        """Graceful stop; safe to call more than once."""
        if self._shutdown_started:
            await self._terminated.wait()
            return
        self._shutdown_started = True
        settings = self.settings.server
        try:
            # Readiness first: probes and load balancers stop routing while we still serve.
            for name in (READINESS, OVERALL, *self.service_names):
                await self.health.set(name, NOT_SERVING)
            self.metrics.ready.set(0)
            logger.info(
                "shutting down: readiness NOT_SERVING",
                extra={
                    "drain_seconds": settings.shutdown_drain_seconds,
                    "grace_seconds": settings.shutdown_grace_seconds,
                },
            )
            if settings.shutdown_drain_seconds > 0:
                await asyncio.sleep(settings.shutdown_drain_seconds)
            # Watchers saw NOT_SERVING; their streams must not hold the stop for its grace.
            self.health.close_watches()
            if self._server is not None:
                await self._server.stop(settings.shutdown_grace_seconds)
            if self._health_server is not None:
                await self._health_server.stop(0)
            await self.health.set(LIVENESS, NOT_SERVING)
            if self.metrics_endpoint is not None:
                # Blocks up to the HTTP server's 0.5 s poll interval: keep it off the loop.
                await asyncio.to_thread(self.metrics_endpoint.stop)
            await self._resources.aclose()
            logger.info("grpc server stopped")
        finally:
            self._terminated.set()

    async def wait_for_termination(self) -> None:
        await self._terminated.wait()

    async def run_until_signal(
        self, on_started: Callable[[int], Awaitable[bool]] | None = None
    ) -> None:
        """Starts, serves until SIGTERM or SIGINT, then shuts down gracefully.
        `on_started(port)` runs once serving; returning False stops at once."""
        loop = asyncio.get_running_loop()
        stop_requested = asyncio.Event()
        for signal_number in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signal_number, stop_requested.set)
        try:
            port = await self.start()
            if on_started is not None and not await on_started(port):
                stop_requested.set()
            waits = [asyncio.ensure_future(stop_requested.wait())]
            if self.components is not None:
                waits.append(asyncio.ensure_future(self.components.stop_requested.wait()))
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in waits:
                    wait.cancel()
            if self.components is not None and self.components.fatal_error is not None:
                logger.error("stopping: %s", self.components.fatal_error)
            else:
                logger.info("stop signal received")
        finally:
            for signal_number in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signal_number)
            await self.shutdown()
