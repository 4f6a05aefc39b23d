"""A startup check that a configured dependency accepts this process's channel.

Recommend answers every request even when Retrieve and Rank are out of reach (flagged
popularity candidates, rule-ordered), so a channel that can never work (a TLS mismatch, a
refused client certificate or token) would otherwise show only as degraded answers. The probe
asks the dependency's health service over the very channel the adapter uses and logs an ERROR
naming the cause. It does not change readiness: the dependency may merely be starting, and
degrading on its outages is the design."""

from __future__ import annotations

import asyncio
import logging

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from recsys.errors import Unavailable

logger = logging.getLogger(__name__)

# PERMISSION_DENIED on the health service says our credentials were accepted (the caller is
# named) though this caller may not check health: reachable. UNAUTHENTICATED refuses them.
_REACHED = (grpc.StatusCode.PERMISSION_DENIED,)
# A server that accepts the TCP connection and then closes it refuses our TLS (a plaintext
# channel to a TLS port, a client certificate it does not trust): a starting server does not.
_DROPPED = ("Socket closed", "Connection reset")
DROPS_BEFORE_ERROR = 3


async def probe_dependency(
    what: str,
    target: str,
    channel: grpc.aio.Channel,
    *,
    window_seconds: float = 120.0,
    interval_seconds: float = 1.0,
) -> bool:
    """Checks `channel` to `what` at `target` until it answers (True) or the failure is
    definite or `window_seconds` pass (an ERROR logged, False)."""
    stub = health_pb2_grpc.HealthStub(channel)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + window_seconds
    drops = 0
    while True:
        try:
            await stub.Check(health_pb2.HealthCheckRequest(), timeout=max(interval_seconds, 1.0))
            break
        except grpc.aio.AioRpcError as error:
            if error.code() in _REACHED:
                break
            details = error.details() or ""
            cause = _definite_cause(error.code(), details)
            drops = drops + 1 if any(sign in details for sign in _DROPPED) else 0
            if cause is None and drops >= DROPS_BEFORE_ERROR:
                cause = "it closes the connection: TLS expected, or our client certificate refused"
            if cause is None and loop.time() >= deadline:
                cause = f"unreachable for {window_seconds:.0f} s"
            if cause is not None:
                logger.error(
                    "dependency refuses this process's channel; answers will be degraded",
                    extra={"dependency": what, "target": target, "cause": cause,
                           "grpc_code": error.code().name, "details": details},
                )  # fmt: skip
                return False
        await asyncio.sleep(interval_seconds)
    logger.info("dependency reachable", extra={"dependency": what, "target": target})
    return True


async def check_readiness(channel: grpc.aio.Channel, *, timeout: float) -> None:
    """One check of the dependency's `readiness` over `channel` (the background health probe):
    returns when it is SERVING (or reached with credentials it names), else Unavailable."""
    stub = health_pb2_grpc.HealthStub(channel)
    try:
        response = await stub.Check(
            health_pb2.HealthCheckRequest(service="readiness"), timeout=timeout
        )
    except grpc.aio.AioRpcError as error:
        if error.code() in _REACHED:
            return
        cause = _definite_cause(error.code(), error.details() or "")
        raise Unavailable(cause or f"{error.code().name}: {error.details()}") from None
    if response.status != health_pb2.HealthCheckResponse.SERVING:
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
        raise Unavailable(f"its readiness is {status}")


def _definite_cause(code: grpc.StatusCode, details: str) -> str | None:
    if code is grpc.StatusCode.UNAUTHENTICATED:
        return "it refuses our credentials (outbound token or client certificate)"
    if "handshake" in details.lower():
        return "the TLS handshake failed (outbound.tls against the server's TLS)"
    return None
