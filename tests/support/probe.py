"""A probe service for scaffolding tests: raw gRPC methods that fail, crash or sleep on demand.

Requests and responses are `google.protobuf.StringValue`, so no extra proto is needed.
"""

from __future__ import annotations

import asyncio

import grpc
from google.protobuf import wrappers_pb2

from recsys.deadlines import remaining_seconds
from recsys.errors import FieldViolation, InvalidArgument, ResourceExhausted, Unavailable

SERVICE = "recsys.test.Probe"


async def _echo(request: wrappers_pb2.StringValue, context: object) -> wrappers_pb2.StringValue:
    return wrappers_pb2.StringValue(value=request.value)


async def _fail(request: wrappers_pb2.StringValue, context: object) -> wrappers_pb2.StringValue:
    if request.value == "invalid":
        raise InvalidArgument(
            [
                FieldViolation("limit", "must be between 1 and 100, got 0"),
                FieldViolation("user_id", "is required"),
            ]
        )
    if request.value == "exhausted":
        raise ResourceExhausted(
            "rate limit exceeded", retry_after_seconds=12.5, reason="RATE_LIMITED"
        )
    raise Unavailable("dependency down", reason="DEPENDENCY_DOWN", metadata={"dependency": "redis"})


async def _crash(request: wrappers_pb2.StringValue, context: object) -> wrappers_pb2.StringValue:
    raise ValueError("secret internal detail " + request.value)


async def _sleep(request: wrappers_pb2.StringValue, context: object) -> wrappers_pb2.StringValue:
    await asyncio.sleep(float(request.value))
    return wrappers_pb2.StringValue(value="slept")


async def _remaining(
    request: wrappers_pb2.StringValue, context: object
) -> wrappers_pb2.StringValue:
    return wrappers_pb2.StringValue(value=repr(remaining_seconds()))


def probe_handler() -> grpc.GenericRpcHandler:
    def method(behaviour: object) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(
            behaviour,
            request_deserializer=wrappers_pb2.StringValue.FromString,
            response_serializer=wrappers_pb2.StringValue.SerializeToString,
        )

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Echo": method(_echo),
            "Fail": method(_fail),
            "Crash": method(_crash),
            "Sleep": method(_sleep),
            "Remaining": method(_remaining),
        },
    )


def probe_callable(channel: grpc.Channel | grpc.aio.Channel, name: str) -> object:
    return channel.unary_unary(
        f"/{SERVICE}/{name}",
        request_serializer=wrappers_pb2.StringValue.SerializeToString,
        response_deserializer=wrappers_pb2.StringValue.FromString,
    )
