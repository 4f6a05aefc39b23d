"""Requests that are not valid messages answer INVALID_ARGUMENT, like any other bad input.

gRPC Python deserializes a request with its method handler's `request_deserializer` after the
interceptors have chosen the handler, but outside them: a deserializer that raises (protobuf's
DecodeError for bytes that are not the message, such as a string that is not UTF-8) answers
UNKNOWN, logs a traceback and bypasses the access log and the request id. And a message can
decode yet break the rules of its well-known types (a Timestamp after 9999-12-31), which
`ToDatetime` refuses with a ValueError deep in a servicer.

`DecodingServer` stands in for the server while services register: each unary method gets a
deserializer that never raises. Bytes that do not decode (`wire.locate` names the broken field
where it can), and messages that break a rule of a well-known type (`well_known`), become an
`InvalidRequest`; the method raises its `InvalidArgument` from inside the interceptor chain, so
error mapping answers it with field violations, the request id and the access log line as usual.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import grpc
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message

from recsys.errors import FieldViolation, InvalidArgument
from recsys.grpc_server.well_known import check_message
from recsys.grpc_server.wire import locate

# ErrorInfo.reason of a request whose bytes are not the method's message.
UNDECODABLE_REASON = "UNDECODABLE_REQUEST"


@dataclass(frozen=True, slots=True)
class InvalidRequest:
    """What a request deserializes to when it is not a valid message."""

    error: InvalidArgument


def safe_deserializer(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """`deserializer`, returning an InvalidRequest where it would raise or where the message it
    returns breaks the rules of a well-known type."""
    # A generated `Message.FromString` is bound to its class, which names the message.
    message_class = getattr(deserializer, "__self__", None)
    descriptor = (
        # The stubs also allow upb's own Descriptor class, which has the same attributes.
        cast(Descriptor, message_class.DESCRIPTOR)
        if isinstance(message_class, type) and issubclass(message_class, Message)
        else None
    )

    def deserialize(data: bytes) -> Any:
        try:
            message = deserializer(data)
        except Exception:  # any failure to deserialize is a fault of the bytes sent
            return InvalidRequest(_undecodable(descriptor, data))
        if isinstance(message, Message):
            try:
                check_message(message)
            except InvalidArgument as error:
                return InvalidRequest(error)
        return message

    return deserialize


def _undecodable(descriptor: Descriptor | None, data: bytes) -> InvalidArgument:
    fault = locate(descriptor, data) if descriptor is not None else None
    if fault is None:
        name = f" as {descriptor.full_name}" if descriptor is not None else ""
        violation = FieldViolation("", f"the request could not be decoded{name}")
    else:
        violation = FieldViolation(
            fault.field, f"{fault.description}; the request could not be decoded"
        )
    return InvalidArgument([violation], reason=UNDECODABLE_REASON)


def decoding_handler(handler: grpc.RpcMethodHandler | None) -> grpc.RpcMethodHandler | None:
    """A unary-unary handler whose deserializer never raises and whose behaviour raises the
    InvalidArgument of an InvalidRequest; other handlers as they are."""
    if (
        handler is None
        or handler.request_streaming
        or handler.response_streaming
        or handler.request_deserializer is None
    ):
        return handler
    behaviour = handler.unary_unary

    async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, InvalidRequest):
            raise request.error
        result = behaviour(request, context)
        if inspect.isawaitable(result):
            result = await result
        return result

    return grpc.unary_unary_rpc_method_handler(
        unary_unary,
        request_deserializer=safe_deserializer(handler.request_deserializer),
        response_serializer=handler.response_serializer,
    )


class DecodingGenericHandler(grpc.GenericRpcHandler):  # type: ignore[misc]
    """A generic handler whose unary methods go through `decoding_handler`."""

    def __init__(self, inner: grpc.GenericRpcHandler) -> None:
        self._inner = inner

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        return decoding_handler(self._inner.service(handler_call_details))


class DecodingServer(grpc.aio.Server):  # type: ignore[misc]
    """A grpc.aio.Server that registers handlers with `server` through `decoding_handler`;
    everything else is `server`'s own."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server

    def add_generic_rpc_handlers(
        self, generic_rpc_handlers: Sequence[grpc.GenericRpcHandler]
    ) -> None:
        self._server.add_generic_rpc_handlers(
            tuple(DecodingGenericHandler(handler) for handler in generic_rpc_handlers)
        )

    def add_registered_method_handlers(
        self, service_name: str, method_handlers: Mapping[str, grpc.RpcMethodHandler]
    ) -> None:
        self._server.add_registered_method_handlers(
            service_name,
            {name: decoding_handler(handler) for name, handler in method_handlers.items()},
        )

    def add_insecure_port(self, address: str) -> int:
        port: int = self._server.add_insecure_port(address)
        return port

    def add_secure_port(self, address: str, server_credentials: grpc.ServerCredentials) -> int:
        port: int = self._server.add_secure_port(address, server_credentials)
        return port

    async def start(self) -> None:
        await self._server.start()

    async def stop(self, grace: float | None) -> None:
        await self._server.stop(grace)

    async def wait_for_termination(self, timeout: float | None = None) -> bool:
        terminated: bool = await self._server.wait_for_termination(timeout)
        return terminated
