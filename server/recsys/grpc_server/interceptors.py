"""The interceptor of every recsys server: one grpc.aio interceptor (`RecsysInterceptor`) that
runs these layers, outermost first:

1. The call's entry (request id, observability, error mapping, folded into one step):
   - takes `x-request-id` from the caller or generates one, exposes it to logs and servicers,
     and returns it in the trailing metadata;
   - Prometheus counts and latency per method and status code, and (`logging.access_log`) one
     structured access-log line per call, naming the authenticated caller;
   - RecsysError -> status code with google.rpc.Status details; anything else is logged with
     its traceback and becomes INTERNAL with a generic message.
2. AuthInterceptor (`auth.py`, with `auth.enabled`): names the caller, applies the allowlist.
3. DeadlineInterceptor: applies the server's default deadline when the caller sent none, cuts
   a longer one to the server's maximum, and records the deadline for outbound calls
   (`recsys.deadlines`).
4. CallerLimitInterceptor and AdmissionInterceptor: per-caller and global load shedding.

One interceptor, not one per layer: grpc.aio runs the whole interceptor pipeline for every call
(each interceptor awaits its continuation and builds a new method handler), so each layer as an
interceptor of its own cost a few microseconds per call. What depends on the method alone (its
metric children, which layers apply) is worked out once per method and kept.

The layers wrap every kind of method, streaming ones included (health Watch, reflection), so
that one path authenticates, logs and maps the errors of every call; the deadline and load
shedding layers act on unary calls only (every recsys.v1 RPC is unary; a health Watch is meant
to stay open). Requests that are not valid messages go through them too: the services are
registered with deserializers that never raise (`decoding.py`), and their InvalidArgument is
raised inside the chain.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from recsys.deadlines import request_deadline
from recsys.errors import (
    ERROR_DOMAIN,
    DeadlineExceeded,
    FieldViolation,
    InvalidArgument,
    RecsysError,
    ResourceExhausted,
)
from recsys.grpc_server.admission import AdmissionController, CallerLimits, Overloaded
from recsys.observability.logging import reset_request_id, set_request_id
from recsys.observability.metrics import GrpcServerMetrics

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("recsys.access")

REQUEST_ID_KEY = "x-request-id"
# gRPC's server pushback: a client retry policy waits this many milliseconds before retrying.
RETRY_PUSHBACK_KEY = "grpc-retry-pushback-ms"
# The methods of the platform's API (load shedding applies to these only).
PLATFORM_METHODS = "/recsys.v1."
MAX_REQUEST_ID_LENGTH = 128
# A deadline further away than this is treated as "no deadline" (gRPC reports infinity).
_NO_DEADLINE_SECONDS = 1e8

_STATUS_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}
# Bounds of an error's status on the wire (see `status_for_error`). The message travels twice
# (grpc-message, percent-encoded, and inside grpc-status-details-bin, base64-encoded).
MAX_MESSAGE_BYTES = 512
MAX_VIOLATIONS_BYTES = 2048
MAX_VIOLATION_TEXT_BYTES = 256
_ELLIPSIS = "\u2026"

Behaviour = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


@dataclass
class CallState:
    """What the interceptors of one call share."""

    method: str
    request_id: str
    code: grpc.StatusCode = grpc.StatusCode.OK
    # The authenticated caller ("" while unknown, or with authentication off).
    caller: str = ""


_call_state: contextvars.ContextVar[CallState | None] = contextvars.ContextVar(
    "recsys_call_state", default=None
)


def current_call_state() -> CallState | None:
    return _call_state.get()


def current_caller() -> str:
    """The authenticated caller of the call being served ("" when none): for audit records."""
    state = _call_state.get()
    return state.caller if state is not None else ""


def status_code_of(number: int) -> grpc.StatusCode:
    return _STATUS_BY_NUMBER.get(number, grpc.StatusCode.UNKNOWN)


# Handler kind (request streaming, response streaming) -> its `grpc_type` (the metrics' label)
# and the factory of a handler of that kind.
_KINDS: dict[tuple[bool, bool], tuple[str, Callable[..., grpc.RpcMethodHandler]]] = {
    (False, False): ("unary", grpc.unary_unary_rpc_method_handler),
    (False, True): ("server_stream", grpc.unary_stream_rpc_method_handler),
    (True, False): ("client_stream", grpc.stream_unary_rpc_method_handler),
    (True, True): ("bidi_stream", grpc.stream_stream_rpc_method_handler),
}


def _behaviour_of(handler: grpc.RpcMethodHandler) -> Behaviour:
    """The handler's behaviour as one coroutine, whatever its kind: the request (a message or,
    for client streams, the request iterator) goes in as it is; a streamed response is written
    with `context.write` (an async or sync generator), or by the handler itself (a coroutine
    that writes and returns None, as grpc.aio's health Watch)."""
    streaming = bool(handler.response_streaming)
    # A handler sets the one behaviour of its kind.
    inner = (
        handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
    )

    async def behaviour(request: Any, context: grpc.aio.ServicerContext) -> Any:
        result = inner(request, context)
        if inspect.isawaitable(result):
            return await result
        if not streaming:
            return result
        if hasattr(result, "__aiter__"):
            async for response in result:
                await context.write(response)
        else:
            for response in result:
                await context.write(response)
        return None

    return behaviour


# Wraps a behaviour into another (a layer of the chain, bound to one method).
Wrap = Callable[[Behaviour], Behaviour]


class _CallInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Base of a layer: wraps the behaviour of every handler (unary and streaming) with
    `around`, which is given the method's path and kind (`grpc_type`); a layer with
    `unary_only` leaves streaming handlers as they are. Runs inside RecsysInterceptor (see
    `bind`), or alone as a grpc.aio interceptor of its own."""

    unary_only = False

    async def around(
        self,
        behaviour: Behaviour,
        request: Any,
        context: grpc.aio.ServicerContext,
        method: str,
        kind: str,
    ) -> Any:
        raise NotImplementedError

    def applies(self, method: str, kind: str) -> bool:
        """Whether the layer acts on calls of this method (decided once per method)."""
        return kind == "unary" or not self.unary_only

    def bind(self, method: str, kind: str) -> Wrap | None:
        """How the layer wraps the behaviour of one call of `method`; None where it does not
        apply. A partial, not a closure: the call goes straight to `around`, one frame."""
        if not self.applies(method, kind):
            return None
        around = self.around

        def wrap(behaviour: Behaviour) -> Behaviour:
            return functools.partial(around, behaviour, method=method, kind=kind)

        return wrap

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        kind, factory = _KINDS[(bool(handler.request_streaming), bool(handler.response_streaming))]
        method: str = handler_call_details.method
        wrap = self.bind(method, kind)
        if wrap is None:
            return handler
        return factory(
            wrap(_behaviour_of(handler)),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def _valid_request_id(value: str) -> bool:
    return 0 < len(value) <= MAX_REQUEST_ID_LENGTH and all(
        "\x21" <= character <= "\x7e" for character in value
    )


def _request_id_of(context: grpc.aio.ServicerContext) -> str:
    """The caller's `x-request-id` when valid, else a new one."""
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_KEY and isinstance(value, str) and _valid_request_id(value):
            return value
    # 128 random bits as 32 hex digits, like uuid4().hex, without its os.urandom system call
    # per call (several microseconds under load). Ids need to be unique, not unpredictable;
    # `random` reseeds in a forked child, so replicas do not repeat each other's ids.
    return f"{random.getrandbits(128):032x}"


def _failure_code(context: grpc.aio.ServicerContext, state: CallState) -> grpc.StatusCode:
    """The status code of a call that ended with an exception."""
    if state.code is not grpc.StatusCode.OK:
        return state.code
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(code, int):
        return status_code_of(code)
    return grpc.StatusCode.UNKNOWN


class _CallEntry:
    """The outermost layer of one method's calls: request id, metrics and access log, error
    mapping. The method's metric children are looked up once (a `labels()` lookup takes a
    lock and builds a key on every call), and the per-code counters as codes occur."""

    def __init__(
        self, metrics: GrpcServerMetrics, method: str, kind: str, *, access_log: bool
    ) -> None:
        _, _, path = method.partition("/")
        service, _, method_name = path.partition("/")
        self._labels = (kind, service, method_name)
        self._method = method
        self._handled_metric = metrics.handled
        self._started = metrics.started.labels(*self._labels)
        self._seconds = metrics.handling_seconds.labels(*self._labels)
        self._handled: dict[grpc.StatusCode, Any] = {}
        self._access_log = access_log

    async def run(
        self, behaviour: Behaviour, request: Any, context: grpc.aio.ServicerContext
    ) -> Any:
        method = self._method
        request_id = _request_id_of(context)
        state = CallState(method=method, request_id=request_id)
        state_token = _call_state.set(state)
        log_token = set_request_id(request_id)
        # Set before the call so that aborts without metadata of their own carry it too.
        context.set_trailing_metadata(((REQUEST_ID_KEY, request_id),))
        self._started.inc()
        started = time.perf_counter()
        code = grpc.StatusCode.UNKNOWN
        try:
            try:
                response = await behaviour(request, context)
            except (asyncio.CancelledError, grpc.aio.AbortError):
                raise
            except RecsysError as error:
                await _abort(context, state, error)
            except Exception:
                logger.exception("unhandled error in %s", method, extra={"grpc_method": method})
                await _abort(
                    context,
                    state,
                    RecsysError(
                        f"internal error; quote request_id {request_id} to the operators",
                        reason="INTERNAL",
                    ),
                    code=grpc.StatusCode.INTERNAL,
                )
            code = grpc.StatusCode.OK
            return response
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except BaseException:
            code = _failure_code(context, state)
            raise
        finally:
            elapsed = time.perf_counter() - started
            handled = self._handled.get(code)
            if handled is None:
                handled = self._handled[code] = self._handled_metric.labels(
                    *self._labels, code.name
                )
            handled.inc()
            self._seconds.observe(elapsed)
            if self._access_log:
                access_logger.info(
                    "rpc",
                    extra={
                        "grpc_method": method,
                        "grpc_code": code.name,
                        "duration_ms": round(elapsed * 1000, 3),
                        "peer": context.peer(),
                        "caller": state.caller,
                    },
                )
            reset_request_id(log_token)
            _call_state.reset(state_token)


def retry_after_seconds(error: RecsysError) -> float | None:
    """When the caller may try again: the rate limit's window, or an overloaded server's hint."""
    if isinstance(error, ResourceExhausted | Overloaded):
        return error.retry_after_seconds
    return None


def status_for_error(error: RecsysError, request_id: str) -> status_pb2.Status:
    """The google.rpc.Status (with details) that represents a RecsysError on the wire.

    Its size is bounded: trailers past the caller's metadata limit (gRPC's default: 8 KiB
    soft, 16 KiB hard) fail the call with RESOURCE_EXHAUSTED instead of carrying the status.
    The message is cut at MAX_MESSAGE_BYTES; field violations are kept, in order, while they
    fit in MAX_VIOLATIONS_BYTES, and ErrorInfo's `omitted_violations` counts the rest."""
    details: list[any_pb2.Any] = []
    metadata = dict(error.metadata)
    if isinstance(error, InvalidArgument):
        kept = _bounded_violations(error.violations)
        if len(kept) < len(error.violations):
            metadata["omitted_violations"] = str(len(error.violations) - len(kept))
        details.append(_pack(error_details_pb2.BadRequest(field_violations=kept)))
    retry_after = retry_after_seconds(error)
    if retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(max(0, round(retry_after * 1000)))
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    info = error_details_pb2.ErrorInfo(
        reason=error.reason,
        domain=ERROR_DOMAIN,
        metadata={**metadata, "request_id": request_id},
    )
    details.append(_pack(info))
    message = _truncated(error.message, MAX_MESSAGE_BYTES)
    return status_pb2.Status(code=int(error.code), message=message, details=details)


def _bounded_violations(
    violations: Sequence[FieldViolation],
) -> list[error_details_pb2.BadRequest.FieldViolation]:
    kept: list[error_details_pb2.BadRequest.FieldViolation] = []
    size = 0
    for violation in violations:
        item = error_details_pb2.BadRequest.FieldViolation(
            field=_truncated(violation.field, MAX_VIOLATION_TEXT_BYTES),
            description=_truncated(violation.description, MAX_VIOLATION_TEXT_BYTES),
            reason=violation.cause,
        )
        size += item.ByteSize() + 3  # with its tag and length in the BadRequest
        if size > MAX_VIOLATIONS_BYTES:
            break
        kept.append(item)
    return kept


def _truncated(text: str, limit: int) -> str:
    """`text` cut to at most `limit` bytes of UTF-8, ending in an ellipsis when cut."""
    encoded = text.encode()
    if len(encoded) <= limit:
        return text
    return encoded[: limit - len(_ELLIPSIS.encode())].decode(errors="ignore") + _ELLIPSIS


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


async def _abort(
    context: grpc.aio.ServicerContext,
    state: CallState,
    error: RecsysError,
    *,
    code: grpc.StatusCode | None = None,
) -> NoReturn:
    """Ends the call with the error's status, google.rpc.Status details and request id."""
    request_id = state.request_id
    status = status_for_error(error, request_id)
    grpc_code = code or status_code_of(int(error.code))
    status.code = grpc_code.value[0]
    state.code = grpc_code
    answer = rpc_status.to_status(status)
    # The parts of `answer` go to `abort`: `abort_with_status` is not declared by
    # grpc.aio.ServicerContext, and it too replaces the trailing metadata set earlier,
    # so the request id has to be restated either way.
    trailing = tuple(answer.trailing_metadata)
    if request_id:
        trailing += ((REQUEST_ID_KEY, request_id),)
    if isinstance(error, Overloaded):
        # gRPC clients' retry policy honours this hint; jittered, so the callers refused
        # together do not come back together.
        pushback = error.retry_after_seconds * random.uniform(0.5, 1.5)
        trailing += ((RETRY_PUSHBACK_KEY, str(max(1, round(pushback * 1000)))),)
    await context.abort(answer.code, answer.details, trailing_metadata=trailing)
    # grpc.aio's abort always raises AbortError; should it return, the call still fails.
    raise error


class DeadlineInterceptor(_CallInterceptor):
    """The call's deadline: the caller's, cut to `max_deadline_seconds`, or the default when it
    sent none. Streams keep the caller's own (a health Watch stays open by design)."""

    unary_only = True

    def __init__(
        self, default_deadline_seconds: float, max_deadline_seconds: float | None = None
    ) -> None:
        self._default = default_deadline_seconds
        self._max = max_deadline_seconds if max_deadline_seconds is not None else float("inf")

    async def around(
        self,
        behaviour: Behaviour,
        request: Any,
        context: grpc.aio.ServicerContext,
        method: str,
        kind: str,
    ) -> Any:
        remaining = context.time_remaining()
        if remaining is None or remaining > _NO_DEADLINE_SECONDS:
            remaining = self._default
        cut = remaining > self._max
        remaining = min(remaining, self._max)
        scope = asyncio.timeout(remaining)
        with request_deadline(remaining):
            try:
                async with scope:
                    return await behaviour(request, context)
            except TimeoutError:
                if not scope.expired():
                    raise  # a timeout inside the servicer, not this call's deadline
                raise DeadlineExceeded(
                    f"the call did not finish within its deadline of {remaining * 1000:.0f} ms"
                    + (" (the server's maximum)" if cut else "")
                ) from None


class CallerLimitInterceptor(_CallInterceptor):
    """Per-caller fairness for the platform's own methods: an authenticated caller's calls in
    flight are bounded (`CallerLimits`), so one caller cannot take every admission slot. Calls
    without an authenticated caller (authentication off, exempt services) are not limited."""

    unary_only = True

    def __init__(self, limits: CallerLimits) -> None:
        self.limits = limits

    def applies(self, method: str, kind: str) -> bool:
        return kind == "unary" and method.startswith(PLATFORM_METHODS)

    async def around(
        self,
        behaviour: Behaviour,
        request: Any,
        context: grpc.aio.ServicerContext,
        method: str,
        kind: str,
    ) -> Any:
        caller = current_caller()
        if not caller:
            return await behaviour(request, context)
        async with self.limits.admit(caller):
            return await behaviour(request, context)


class AdmissionInterceptor(_CallInterceptor):
    """Load shedding for the platform's own methods (health and reflection always answer)."""

    unary_only = True

    def __init__(self, controller: AdmissionController) -> None:
        self.controller = controller

    def applies(self, method: str, kind: str) -> bool:
        return kind == "unary" and method.startswith(PLATFORM_METHODS)

    async def around(
        self,
        behaviour: Behaviour,
        request: Any,
        context: grpc.aio.ServicerContext,
        method: str,
        kind: str,
    ) -> Any:
        async with self.controller.admit():
            return await behaviour(request, context)


@dataclass(frozen=True)
class _Route:
    """What RecsysInterceptor worked out for one method and handler kind."""

    streams: tuple[bool, bool]
    factory: Callable[..., grpc.RpcMethodHandler]
    entry: _CallEntry
    # The inner layers that apply to the method, innermost first.
    wraps: tuple[Wrap, ...]


# Routes kept at most: methods are the servers' own, but a generic handler may answer any path.
MAX_ROUTES = 4096


class RecsysInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """The whole chain as one grpc.aio interceptor: the call's entry (request id, metrics,
    access log, error mapping), then `layers` (outermost first) around the handler."""

    def __init__(
        self,
        metrics: GrpcServerMetrics,
        *,
        access_log: bool,
        layers: Sequence[_CallInterceptor] = (),
    ) -> None:
        self._metrics = metrics
        self._access_log = access_log
        self._layers = tuple(layers)
        self._routes: dict[str, _Route] = {}

    def _route(self, method: str, streams: tuple[bool, bool]) -> _Route:
        route = self._routes.get(method)
        if route is not None and route.streams == streams:
            return route
        kind, factory = _KINDS[streams]
        wraps = [layer.bind(method, kind) for layer in reversed(self._layers)]
        route = _Route(
            streams,
            factory,
            _CallEntry(self._metrics, method, kind, access_log=self._access_log),
            tuple(wrap for wrap in wraps if wrap is not None),
        )
        if len(self._routes) < MAX_ROUTES:
            self._routes[method] = route
        return route

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        route = self._route(
            handler_call_details.method,
            (bool(handler.request_streaming), bool(handler.response_streaming)),
        )
        behaviour = _behaviour_of(handler)
        for wrap in route.wraps:
            behaviour = wrap(behaviour)
        return route.factory(
            functools.partial(route.entry.run, behaviour),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def server_interceptors(
    metrics: GrpcServerMetrics,
    *,
    access_log: bool,
    default_deadline_seconds: float,
    max_deadline_seconds: float | None = None,
    auth: _CallInterceptor | None = None,
    caller_limits: CallerLimits | None = None,
    admission: AdmissionController | None = None,
) -> list[grpc.aio.ServerInterceptor]:
    """The interceptor chain of every recsys server (one RecsysInterceptor). Authentication
    sits inside error mapping, so its refusals carry the usual status details, and names the
    caller before anything limits per caller; the per-caller and global admission sit inside
    the deadline, which they need to know whether a call can still finish in time, and a
    caller over its own bound waits outside the shared queue."""
    layers: list[_CallInterceptor] = []
    if auth is not None:
        layers.append(auth)
    layers.append(DeadlineInterceptor(default_deadline_seconds, max_deadline_seconds))
    if caller_limits is not None:
        layers.append(CallerLimitInterceptor(caller_limits))
    if admission is not None:
        layers.append(AdmissionInterceptor(admission))
    return [RecsysInterceptor(metrics, access_log=access_log, layers=layers)]
