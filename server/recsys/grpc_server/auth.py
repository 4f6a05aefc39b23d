"""Caller authentication and per-method authorisation (an interceptor).

A caller is named by its bearer token (`authorization: Bearer <token>`) or, with mutual TLS,
by its client certificate's common name. Exempt services (health, reflection) need neither.
Missing or unknown credentials: UNAUTHENTICATED; a known caller not on the method's allowlist:
PERMISSION_DENIED.
"""

from __future__ import annotations

import hmac
from typing import Any

import grpc

from recsys.errors import PermissionDenied, Unauthenticated
from recsys.grpc_server.interceptors import Behaviour, _UnaryInterceptor
from recsys.settings import AuthSettings


class AuthInterceptor(_UnaryInterceptor):
    def __init__(self, settings: AuthSettings) -> None:
        self.settings = settings
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

    def _identify(self, context: grpc.aio.ServicerContext) -> str | None:
        for key, value in context.invocation_metadata() or ():
            if key == "authorization" and isinstance(value, str):
                scheme, _, token = value.partition(" ")
                if scheme.lower() == "bearer" and token:
                    return self._caller_from_token(token.strip())
                return None
        if self.settings.accept_client_certificates:
            names = (context.auth_context() or {}).get("x509_common_name") or []
            if names:
                name = names[0]
                return name.decode() if isinstance(name, bytes) else str(name)
        return None

    def _allowed(self, method: str, caller: str) -> bool:
        service = method.lstrip("/").partition("/")[0]
        allowed = self.settings.allow.get(method) or self.settings.allow.get(service)
        if allowed is None:
            allowed = self.settings.default_allow
        return "*" in allowed or caller in allowed

    async def around(
        self, behaviour: Behaviour, request: Any, context: grpc.aio.ServicerContext, method: str
    ) -> Any:
        service = method.lstrip("/").partition("/")[0]
        if service in self.settings.exempt_services:
            return await behaviour(request, context)
        caller = self._identify(context)
        if caller is None:
            raise Unauthenticated(
                "missing or invalid credentials: send `authorization: Bearer <token>` or a "
                "client certificate"
            )
        if not self._allowed(method, caller):
            raise PermissionDenied(f"caller {caller} may not call {method}")
        return await behaviour(request, context)
