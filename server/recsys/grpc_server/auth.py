"""Caller authentication and per-method authorisation (an interceptor on every kind of call).

Who the caller is:
- a bearer token (`authorization: Bearer <token>`, `auth.tokens`) names the caller when one is
  sent; an unknown or malformed one is UNAUTHENTICATED (no fallback to the certificate);
- else, with mutual TLS (`tls.require_client_auth`), the client certificate does, by the one
  name `auth.certificate_identity` selects: its SAN URI (default), SAN DNS name or subject
  common name. A certificate without that name or with several is UNAUTHENTICATED;
- else UNAUTHENTICATED.

What it may call (`authorised`): the most specific `auth.allow` entry (the method's, else its
service's) decides; without one, the internal services (INTERNAL_SERVICES) admit
`auth.internal_callers` and every other method `auth.default_allow`, both empty by default, so
what is not named is PERMISSION_DENIED. Only `auth.exempt_services` (services or methods) are
answered without credentials; none by default.
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import logging
import warnings
from typing import Any

import grpc
from cryptography import x509
from cryptography.x509.oid import NameOID

from recsys.errors import ConfigurationError, PermissionDenied, Unauthenticated
from recsys.grpc_server.interceptors import Behaviour, _CallInterceptor, current_call_state
from recsys.settings import AuthSettings, RecsysSettings

logger = logging.getLogger(__name__)

# Services other services and jobs call, not clients: without an `allow` entry only
# `auth.internal_callers` may call them (Ingest included: its one method writes).
INTERNAL_SERVICES = frozenset(
    {
        "recsys.v1.IndexShardService",
        "recsys.v1.RetrieveService",
        "recsys.v1.RankService",
        "recsys.v1.IngestService",
    }
)

_PEM_KEY = "x509_pem_cert"


def service_of(method: str) -> str:
    """`package.Service` of a `/package.Service/Method` path."""
    return method.lstrip("/").partition("/")[0]


def authorised(settings: AuthSettings, method: str, caller: str) -> bool:
    """Whether `caller` (authenticated) may call `method` (`/package.Service/Method`)."""
    service = service_of(method)
    allowed = settings.allow.get(method)
    if allowed is None:
        allowed = settings.allow.get(service)
    if allowed is None:
        allowed = (
            settings.internal_callers if service in INTERNAL_SERVICES else settings.default_allow
        )
    return "*" in allowed or caller in allowed


def exempt(settings: AuthSettings, method: str) -> bool:
    """Whether `method` is answered without credentials (its service or itself is exempt)."""
    return method in settings.exempt_services or service_of(method) in settings.exempt_services


@functools.lru_cache(maxsize=1024)
def certificate_identity(pem: bytes, kind: str) -> str | None:
    """The one name of kind `kind` (`san_uri`, `san_dns`, `common_name`) a PEM certificate
    carries, or None when it has none, several, or an empty or unprintable one."""
    try:
        certificate = x509.load_pem_x509_certificate(pem)
    except ValueError:
        return None
    names: list[str]
    if kind == "common_name":
        with warnings.catch_warnings():  # an empty CN warns; it is refused below
            warnings.simplefilter("ignore")
            attributes = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        names = [
            attribute.value.decode() if isinstance(attribute.value, bytes) else attribute.value
            for attribute in attributes
        ]
    else:
        try:
            alternative = certificate.extensions.get_extension_for_class(
                x509.SubjectAlternativeName
            ).value
        except x509.ExtensionNotFound:
            return None
        kind_class = x509.UniformResourceIdentifier if kind == "san_uri" else x509.DNSName
        names = list(alternative.get_values_for_type(kind_class))
    if len(names) != 1:
        return None
    name = names[0]
    if not name or name != name.strip() or not name.isprintable():
        return None
    return name


class AuthInterceptor(_CallInterceptor):
    """Authenticates and authorises every call, unary or streaming, before the deadline and
    admission layers; records the caller in the call's state (access log, audit records)."""

    def __init__(self, settings: AuthSettings, *, verified_client_certificates: bool) -> None:
        self.settings = settings
        # Certificates name callers only when the TLS handshake verified them against the
        # client CA (require_client_auth).
        self._certificates = settings.accept_client_certificates and verified_client_certificates
        self._tokens = [
            (name, token.get_secret_value().encode()) for name, token in settings.tokens.items()
        ]

    def _caller_from_token(self, token: str) -> str | None:
        presented = token.encode()
        found = None
        for name, expected in self._tokens:  # compare with every token: no timing hint
            if hmac.compare_digest(presented, expected):
                found = name
        return found

    def _caller_from_certificate(self, context: grpc.aio.ServicerContext) -> str | None:
        if not self._certificates:
            return None
        pems = (context.auth_context() or {}).get(_PEM_KEY) or []
        if len(pems) != 1:
            return None
        pem = pems[0] if isinstance(pems[0], bytes) else str(pems[0]).encode()
        return certificate_identity(pem, self.settings.certificate_identity)

    def identify(self, context: grpc.aio.ServicerContext) -> str | None:
        """The caller, or None when the call carries no valid credentials."""
        authorizations = [
            value for key, value in context.invocation_metadata() or () if key == "authorization"
        ]
        if authorizations:
            if len(authorizations) != 1 or not isinstance(authorizations[0], str):
                return None
            scheme, _, token = authorizations[0].partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                return None
            return self._caller_from_token(token.strip())
        return self._caller_from_certificate(context)

    async def around(
        self,
        behaviour: Behaviour,
        request: Any,
        context: grpc.aio.ServicerContext,
        method: str,
        kind: str,
    ) -> Any:
        caller = self.identify(context)
        state = current_call_state()
        if state is not None and caller is not None:
            state.caller = caller
        if exempt(self.settings, method):
            return await behaviour(request, context)
        if caller is None:
            raise Unauthenticated(
                "missing or invalid credentials: send `authorization: Bearer <token>` or a "
                "client certificate naming the caller"
            )
        if not authorised(self.settings, method, caller):
            raise PermissionDenied(f"caller {caller} may not call {method}")
        return await behaviour(request, context)


def is_loopback_host(host: str) -> bool:
    """Whether a listening address's host is loopback only (`127.0.0.1`, `::1`, `localhost`)."""
    host = host.strip().strip("[]").lower()
    if host in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def auth_interceptor(settings: RecsysSettings) -> AuthInterceptor | None:
    """The server's AuthInterceptor (None with auth off), after checking that its credentials
    travel safely: bearer tokens over a plaintext port are refused unless it is loopback or
    `auth.allow_plaintext_tokens` is set (a WARNING either way)."""
    auth, server = settings.auth, settings.server
    if not auth.enabled:
        return None
    if auth.tokens and not server.tls.enabled:
        where = f"server.host {server.host}"
        if auth.allow_plaintext_tokens or is_loopback_host(server.host):
            logger.warning(
                "bearer tokens accepted over plaintext on %s: anyone who can read the traffic "
                "can replay them; configure server.tls",
                where,
                extra={"allow_plaintext_tokens": auth.allow_plaintext_tokens},
            )
        else:
            raise ConfigurationError(
                f"auth.tokens without server.tls on {where}: bearer tokens would travel in "
                "clear; configure server.tls (or set auth.allow_plaintext_tokens = true)"
            )
    verified = server.tls.require_client_auth
    if not auth.tokens and not (verified and auth.accept_client_certificates):
        logger.warning(
            "auth.enabled with no tokens and no verified client certificates "
            "(tls.require_client_auth): every call but the exempt services is refused"
        )
    return AuthInterceptor(auth, verified_client_certificates=verified)
