"""Channel arguments shared by the platform's outbound gRPC clients."""

from __future__ import annotations


def reconnect_options(max_backoff_ms: int) -> list[tuple[str, int]]:
    """gRPC's default reconnect back-off grows to 120 s: a restarted peer (model server, shard,
    service) would stay unreachable long after it came back. Reconnect within 100 ms to
    `max_backoff_ms` instead."""
    return [
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", max_backoff_ms),
    ]
