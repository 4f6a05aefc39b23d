"""Server reflection that describes what this process hosts, and nothing else.

gRPC's reflection service answers from a descriptor pool: by default the process's whole
pool, which holds every proto module imported (every recsys.v1 service, the clients' protos of
the model server...). Here it gets a pool of its own, built from the files that define the
hosted services and their dependencies, so ListServices names the hosted services only and
FileContainingSymbol / FileByFilename answer NOT_FOUND for a service (or file) this process
does not host.

grpcio-reflection 1.81 ships `grpc.reflection.v1alpha.ServerReflection` only. `grpc.reflection.v1`
(what current grpcurl and Postman ask first) has the same messages, field for field, under
another package name, so the same servicer answers it with the v1alpha messages' (de)serializers:
the bytes on the wire are identical.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import grpc
from google.protobuf import descriptor, descriptor_pool
from grpc_reflection.v1alpha import reflection

logger = logging.getLogger(__name__)

REFLECTION_SERVICE: str = reflection.SERVICE_NAME
REFLECTION_V1_SERVICE = "grpc.reflection.v1.ServerReflection"


def hosted_pool(service_names: Sequence[str]) -> descriptor_pool.DescriptorPool:
    """A descriptor pool holding the files that define `service_names` and their imports."""
    default = descriptor_pool.Default()  # type: ignore[no-untyped-call]
    files: dict[str, descriptor.FileDescriptor] = {}

    def collect(file: descriptor.FileDescriptor) -> None:
        for dependency in file.dependencies:
            if dependency.name not in files:
                collect(dependency)
        files.setdefault(file.name, file)  # after its imports: the order the pool needs

    for name in service_names:
        try:
            collect(default.FindServiceByName(name).file)
        except KeyError:
            logger.warning("reflection cannot describe %s: not in the descriptor pool", name)
    pool = descriptor_pool.DescriptorPool()
    for file in files.values():
        pool.AddSerializedFile(file.serialized_pb)  # type: ignore[no-untyped-call]
    return pool


def enable_reflection(server: grpc.aio.Server, service_names: Sequence[str]) -> None:
    """Serves reflection (v1 and v1alpha) for `service_names`, described from their files
    only."""
    from grpc_reflection.v1alpha import reflection_pb2
    from grpc_reflection.v1alpha._async import ReflectionServicer

    names = [*service_names, REFLECTION_V1_SERVICE]
    servicer = ReflectionServicer(names, pool=hosted_pool(service_names))
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(service, {"ServerReflectionInfo": handler})
            for service in (REFLECTION_SERVICE, REFLECTION_V1_SERVICE)
        ]
    )
