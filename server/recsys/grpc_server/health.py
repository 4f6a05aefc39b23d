"""gRPC health with Watch streams that end when the server shuts down, and Health/List.

grpc_health's servicer keeps a Watch stream open until the client cancels it; one open stream
then holds a graceful stop for its whole grace period. Here every Watch also ends, after the
watcher was told NOT_SERVING, once the server starts stopping.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from typing import Any

import grpc
from google.protobuf.message import Message
from grpc_health.v1 import health


class HealthServicer(health.aio.HealthServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self._closing = asyncio.Event()

    async def Watch(self, request: Any, context: Any) -> None:  # noqa: N802 - gRPC's name
        watch = asyncio.ensure_future(super().Watch(request, context))
        closing = asyncio.ensure_future(self._closing.wait())
        try:
            await asyncio.wait({watch, closing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closing.cancel()
            if not watch.done():
                watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch

    def close_watches(self) -> None:
        """Ends every open Watch stream (the server is stopping)."""
        self._closing.set()

    def statuses(self) -> dict[str, int]:
        """Every health name set so far and its status (for Health/List)."""
        return dict(self._server_status)


@functools.cache
def list_messages() -> tuple[type[Message], type[Message]]:
    """`HealthListRequest` and `HealthListResponse` of grpc.health.v1 (the newer health.proto's
    List method; grpcio-health-checking ships the older file without them). Built in a pool of
    their own, field for field as upstream defines them, so the bytes match any client's."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    from grpc_health.v1 import health_pb2

    field = descriptor_pb2.FieldDescriptorProto
    health_file = descriptor_pb2.FileDescriptorProto()
    health_pb2.DESCRIPTOR.CopyToProto(health_file)
    list_file = descriptor_pb2.FileDescriptorProto(
        name="recsys/health_list.proto",
        package="grpc.health.v1",
        dependency=[health_file.name],
        syntax="proto3",
    )
    list_file.message_type.add(name="HealthListRequest")
    response = list_file.message_type.add(name="HealthListResponse")
    entry = response.nested_type.add(name="StatusesEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=field.TYPE_STRING, label=field.LABEL_OPTIONAL)
    entry.field.add(
        name="value",
        number=2,
        type=field.TYPE_MESSAGE,
        type_name=".grpc.health.v1.HealthCheckResponse",
        label=field.LABEL_OPTIONAL,
    )
    response.field.add(
        name="statuses",
        number=1,
        type=field.TYPE_MESSAGE,
        type_name=".grpc.health.v1.HealthListResponse.StatusesEntry",
        label=field.LABEL_REPEATED,
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(health_file)  # type: ignore[no-untyped-call]
    pool.Add(list_file)  # type: ignore[no-untyped-call]
    classes = message_factory.GetMessages([health_file, list_file], pool=pool)
    return (
        classes["grpc.health.v1.HealthListRequest"],
        classes["grpc.health.v1.HealthListResponse"],
    )


def list_handler(servicer: HealthServicer) -> grpc.GenericRpcHandler:
    """`grpc.health.v1.Health/List`: every health name this server reports, with its status."""
    request_type, response_type = list_messages()

    async def list_statuses(request: Message, context: grpc.aio.ServicerContext) -> Message:
        response = response_type()
        for name, status in sorted(servicer.statuses().items()):
            response.statuses[name].status = status  # type: ignore[attr-defined]
        return response

    return grpc.method_handlers_generic_handler(
        "grpc.health.v1.Health",
        {
            "List": grpc.unary_unary_rpc_method_handler(
                list_statuses,
                request_deserializer=request_type.FromString,
                response_serializer=response_type.SerializeToString,
            )
        },
    )
