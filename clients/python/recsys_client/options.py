"""Connection options shared by the sync and asyncio clients."""

from __future__ import annotations

import ipaddress
import json
import uuid
import warnings
from dataclasses import dataclass, field

# RPCs that are safe to repeat: read-only, or idempotent by contract (erasure, interactions
# deduplicated by event_id). Only these are retried, and only on UNAVAILABLE.
IDEMPOTENT_METHODS: tuple[tuple[str, str], ...] = (
    ("recsys.v1.RecommendService", "Recommend"),
    ("recsys.v1.RecommendService", "DeleteUserData"),
    ("recsys.v1.IngestService", "RecordInteractions"),
    ("recsys.v1.RetrieveService", "Retrieve"),
    ("recsys.v1.RankService", "Rank"),
    ("recsys.v1.IndexShardService", "Search"),
    ("recsys.v1.IndexShardService", "Info"),
)


@dataclass(frozen=True)
class TlsOptions:
    """TLS for the channel; with a certificate chain and key, mutual TLS."""

    root_certificates: bytes | None = None
    certificate_chain: bytes | None = None
    private_key: bytes | None = None
    # Expected server name when it differs from the target host (tests, IP targets).
    server_name_override: str | None = None


@dataclass(frozen=True)
class RetryOptions:
    """gRPC retry policy for the idempotent methods (service config `retryPolicy`): on
    `UNAVAILABLE` (a server shedding load, restarting or gone) or a server's `CANCELLED` (one
    shutting down with the call received but not started) the call is retried after a
    randomised (jittered) back-off, within the call's deadline. The defaults wait about 0.1,
    0.2, 0.4 and 0.8 s (gRPC caps attempts at 5): long enough to bridge a server restart or a
    replica being replaced. A server's `grpc-retry-pushback-ms` hint overrides the back-off."""

    max_attempts: int = 5
    initial_backoff_seconds: float = 0.1
    max_backoff_seconds: float = 1.0
    backoff_multiplier: float = 2.0


@dataclass(frozen=True)
class ClientOptions:
    """How to reach a recsys server."""

    target: str = "127.0.0.1:50051"
    # Deadline of every call unless the call passes its own `timeout`.
    timeout_seconds: float = 1.0
    retry: RetryOptions | None = field(default_factory=RetryOptions)
    tls: TlsOptions | None = None
    # Sent as `authorization: Bearer <token>` on every call when set. Only over TLS, or to a
    # loopback target (127.0.0.0/8, ::1, localhost, a Unix socket) with an
    # InsecureTokenWarning; to any other target without TLS the client refuses to start
    # unless `allow_insecure_token` is set (then it warns too).
    bearer_token: str | None = None
    allow_insecure_token: bool = False
    keepalive_time_ms: int = 30_000
    keepalive_timeout_ms: int = 10_000
    # Reconnect quickly after the server went away (gRPC's default waits 1 s, then up to
    # 120 s): a restarted server is used again within about this bound.
    reconnect_backoff_ms: int = 100
    max_reconnect_backoff_ms: int = 1_000
    max_receive_message_bytes: int = 16 * 1024 * 1024
    max_send_message_bytes: int = 16 * 1024 * 1024

    def service_config(self) -> str:
        method_config: dict[str, object] = {
            "name": [
                {"service": service, "method": method} for service, method in IDEMPOTENT_METHODS
            ],
        }
        if self.retry is not None and self.retry.max_attempts > 1:
            method_config["retryPolicy"] = {
                "maxAttempts": self.retry.max_attempts,
                "initialBackoff": f"{self.retry.initial_backoff_seconds}s",
                "maxBackoff": f"{self.retry.max_backoff_seconds}s",
                "backoffMultiplier": self.retry.backoff_multiplier,
                # CANCELLED from the server: it was shutting down with the call received but
                # not started (gRPC only retries a status that came from the server).
                "retryableStatusCodes": ["UNAVAILABLE", "CANCELLED"],
            }
        return json.dumps({"methodConfig": [method_config]})

    def channel_options(self) -> list[tuple[str, object]]:
        options: list[tuple[str, object]] = [
            ("grpc.service_config", self.service_config()),
            ("grpc.enable_retries", 1 if self.retry is not None else 0),
            ("grpc.keepalive_time_ms", self.keepalive_time_ms),
            ("grpc.keepalive_timeout_ms", self.keepalive_timeout_ms),
            ("grpc.keepalive_permit_without_calls", 0),
            ("grpc.initial_reconnect_backoff_ms", self.reconnect_backoff_ms),
            ("grpc.min_reconnect_backoff_ms", self.reconnect_backoff_ms),
            ("grpc.max_reconnect_backoff_ms", self.max_reconnect_backoff_ms),
            ("grpc.max_receive_message_length", self.max_receive_message_bytes),
            ("grpc.max_send_message_length", self.max_send_message_bytes),
        ]
        if self.tls is not None and self.tls.server_name_override:
            options.append(("grpc.ssl_target_name_override", self.tls.server_name_override))
        return options

    def call_metadata(self, request_id: str | None) -> tuple[tuple[str, str], ...]:
        metadata = [("x-request-id", request_id or uuid.uuid4().hex)]
        if self.bearer_token:
            metadata.append(("authorization", f"Bearer {self.bearer_token}"))
        return tuple(metadata)


class InsecureTokenWarning(UserWarning):
    """A bearer token is sent over a channel without TLS."""


def is_loopback_target(target: str) -> bool:
    """Whether a gRPC target names this machine only: a Unix socket, `localhost`, or loopback
    addresses (`127.0.0.1:50051`, `[::1]:50051`, `dns:///localhost:50051`,
    `ipv4:127.0.0.1:1,127.0.0.2:2`)."""
    if target.startswith(("unix:", "unix-abstract:")):
        return True
    for scheme in ("dns:", "ipv4:", "ipv6:"):
        if target.startswith(scheme):
            target = target[len(scheme) :]
            if target.startswith("//"):  # dns://authority/host:port
                target = target[2:].partition("/")[2]
            break
    addresses = [address.strip() for address in target.split(",")]
    return bool(target) and all(_is_loopback_address(address) for address in addresses)


def _is_loopback_address(address: str) -> bool:
    if address.startswith("["):
        host = address[1:].partition("]")[0]
    elif address.count(":") == 1:
        host = address.partition(":")[0]
    else:
        host = address  # no port, or an IPv6 address without brackets
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_token_transport(options: ClientOptions) -> None:
    """Refuses (ValueError) a bearer token on a plaintext channel to another machine unless
    `allow_insecure_token`; warns (InsecureTokenWarning) whenever one is sent without TLS."""
    if not options.bearer_token or options.tls is not None:
        return
    if not options.allow_insecure_token and not is_loopback_target(options.target):
        raise ValueError(
            f"refusing to send a bearer token to {options.target} without TLS: set "
            "ClientOptions.tls (or allow_insecure_token=True to send it in clear)"
        )
    warnings.warn(
        f"the bearer token travels in clear to {options.target}: the channel has no TLS",
        InsecureTokenWarning,
        stacklevel=3,
    )
