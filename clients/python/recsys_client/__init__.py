"""Typed Python client of the recsys platform (sync and asyncio).

    from recsys_client import RecsysClient, ClientOptions
    with RecsysClient(ClientOptions(target="127.0.0.1:50051")) as client:
        response = client.recommend("user_42", surface="homepage", limit=10)

Generated messages and stubs are importable as `recsys.v1.*_pb2` / `*_pb2_grpc`.
"""

from recsys_client.aio import AsyncRecsysClient
from recsys_client.client import RecsysClient
from recsys_client.errors import FieldViolation, RecsysClientError
from recsys_client.options import ClientOptions, InsecureTokenWarning, RetryOptions, TlsOptions

__all__ = [
    "AsyncRecsysClient",
    "ClientOptions",
    "FieldViolation",
    "InsecureTokenWarning",
    "RecsysClient",
    "RecsysClientError",
    "RetryOptions",
    "TlsOptions",
]
