"""gRPC health with Watch streams that end when the server shuts down.

grpc_health's servicer keeps a Watch stream open until the client cancels it; one open stream
then holds a graceful stop for its whole grace period. Here every Watch also ends, after the
watcher was told NOT_SERVING, once the server starts stopping.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

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
