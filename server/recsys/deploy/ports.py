"""Loopback ports for `recsys up` layouts, tools and tests.

Ports are picked below the kernel's ephemeral range: a process of the layout that binds port 0
(a metrics endpoint) or opens a connection gets a port from that range, and could take a port
chosen for another process of the layout between the check and the bind.
"""

from __future__ import annotations

import itertools
import random
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path

EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LOWEST = 20_000


def ephemeral_low() -> int:
    """The first port the kernel hands out for port 0 (32768 where it does not say)."""
    try:
        return int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    """One free loopback port, from the kernel (bind port 0), for a process started right
    after: tests and benchmarks. A layout of several fixed ports uses `free_port_range`."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def free_ports_below_ephemeral() -> Iterator[int]:
    """Free loopback ports below the ephemeral range, each handed out once, from a random
    start: for a layout whose size is not known up front (the k8s harness). Unlike
    `free_port`, a port the kernel gives another process's port 0 or outgoing connection is
    never one of these."""
    top = ephemeral_low() - 1
    start = random.randrange(LOWEST, top)
    for port in itertools.chain(range(start, top), range(LOWEST, start)):
        if is_free(port):
            yield port


def free_port_range(offsets: Sequence[int], *, extra: int = 0) -> tuple[int, list[int]]:
    """A base port with base + every offset free, and `extra` more free ports outside those,
    all below the ephemeral range. A random start, so two callers at once do not race for the
    same range."""
    top = ephemeral_low() - max(offsets, default=0) - extra - 1
    bases = list(range(LOWEST, top, 211))
    if not bases:
        raise RuntimeError("no loopback port range below the ephemeral ports")
    start = random.randrange(len(bases))
    for base in bases[start:] + bases[:start]:
        taken = {base + offset for offset in offsets}
        if not all(is_free(port) for port in taken):
            continue
        spare: list[int] = []
        for port in range(base + max(offsets, default=0) + 1, top):
            if len(spare) == extra:
                break
            if is_free(port):
                spare.append(port)
        if len(spare) == extra:
            return base, spare
    raise RuntimeError("no free loopback port range for `recsys up`")
