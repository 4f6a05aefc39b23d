"""Outbound gRPC channels: the one place that builds them. Every outbound adapter (the Retrieve
and Rank clients, the shard replicas, the model server) gets its TLS credentials and bearer
token here, from the `outbound` settings, plus the channel arguments they share."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
from pydantic import SecretStr

from recsys.errors import ConfigurationError
from recsys.settings import ClientTlsSettings, OutboundSettings, OutboundTarget

logger = logging.getLogger(__name__)

ChannelOptions = Sequence[tuple[str, Any]]
RequestT = TypeVar("RequestT")

_CERTIFICATE = b"-----BEGIN CERTIFICATE-----"
_PRIVATE_KEY = b"PRIVATE KEY-----"  # PKCS#8, EC or RSA


def reconnect_options(max_backoff_ms: int) -> list[tuple[str, int]]:
    """gRPC's default reconnect back-off grows to 120 s: a restarted peer (model server, shard,
    service) would stay unreachable long after it came back. Reconnect within 100 ms to
    `max_backoff_ms` instead."""
    return [
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", max_backoff_ms),
    ]


@dataclass(frozen=True)
class ChannelSecurity:
    """What the channels to one kind of target present: TLS credentials (None: plaintext), the
    channel arguments TLS needs, and the bearer token every call carries (never in a repr)."""

    credentials: grpc.ChannelCredentials | None
    options: tuple[tuple[str, str], ...] = ()
    token: SecretStr | None = field(default=None, repr=False)

    @property
    def tls(self) -> bool:
        return self.credentials is not None

    def metadata(self) -> tuple[tuple[str, str], ...]:
        if self.token is None:
            return ()
        return (("authorization", f"Bearer {self.token.get_secret_value()}"),)


def channel_security(
    target: OutboundTarget, settings: OutboundSettings, address: str
) -> ChannelSecurity:
    """Reads the TLS files of `target`'s settings; ConfigurationError when one cannot be read
    or holds no PEM certificate or key (checked here, at startup, rather than failing every
    handshake later). A token over plaintext to another machine is logged (not its value)."""
    tls = settings.tls_for(target)
    token = settings.token_for(target)
    if not tls.enabled:
        if token is not None and not _is_loopback(address):
            logger.warning(
                "outbound token sent over a plaintext channel; configure outbound TLS",
                extra={"target_kind": target, "target": address},
            )
        return ChannelSecurity(None, token=token)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_pem(tls.ca_file, _CERTIFICATE, target),
        private_key=_pem(tls.key_file, _PRIVATE_KEY, target),
        certificate_chain=_pem(tls.cert_file, _CERTIFICATE, target),
    )
    return ChannelSecurity(credentials, _tls_options(tls), token)


def outbound_channel(
    target: str,
    kind: OutboundTarget,
    settings: OutboundSettings,
    *,
    options: ChannelOptions = (),
) -> grpc.aio.Channel:
    """A channel to `target` (a "host:port" of `kind`) with `settings`' TLS and token."""
    security = channel_security(kind, settings, target)
    interceptors = [BearerToken(security.token)] if security.token is not None else None
    if security.credentials is None:
        return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
    return grpc.aio.secure_channel(
        target,
        security.credentials,
        options=[*options, *security.options],
        interceptors=interceptors,
    )


class BearerToken(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Adds `authorization: Bearer <token>` to every unary call of a channel (every recsys
    outbound RPC is unary), over TLS or plaintext alike."""

    def __init__(self, token: SecretStr) -> None:
        self._header = ("authorization", f"Bearer {token.get_secret_value()}")

    def __repr__(self) -> str:
        return "BearerToken(**********)"

    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, RequestT], Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: RequestT,
    ) -> Any:
        metadata = grpc.aio.Metadata(*(client_call_details.metadata or ()))
        metadata.add(*self._header)
        details = grpc.aio.ClientCallDetails(
            client_call_details.method,
            client_call_details.timeout,
            metadata,
            client_call_details.credentials,
            client_call_details.wait_for_ready,
        )
        return await continuation(details, request)


def _is_loopback(address: str) -> bool:
    """Whether a gRPC target ("host:port", "[::1]:port", "dns:///host:port", "unix:...") stays
    on this machine."""
    if address.startswith(("unix:", "unix-abstract:")):
        return True
    host = address.split("///")[-1].rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _tls_options(tls: ClientTlsSettings) -> tuple[tuple[str, str], ...]:
    if not tls.server_name_override:
        return ()
    return (("grpc.ssl_target_name_override", tls.server_name_override),)


def _pem(path: Path | None, marker: bytes, target: OutboundTarget) -> bytes | None:
    if path is None:
        return None
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ConfigurationError(
            f"outbound TLS for {target}: cannot read {path}: {error.strerror}"
        ) from None
    if marker not in data:
        what = "certificate" if marker == _CERTIFICATE else "private key"
        raise ConfigurationError(f"outbound TLS for {target}: {path} holds no PEM {what}")
    return data
