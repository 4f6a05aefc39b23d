"""A loopback TCP proxy that can pass, slow down or refuse traffic: how tests make a real Redis
(or any server) slow or unreachable without touching it."""

from __future__ import annotations

import asyncio
import contextlib


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.delay_seconds = 0.0
        self.refusing = False
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def refuse(self) -> None:
        """Drops every open connection and refuses new ones (the server 'goes down')."""
        self.refusing = True
        for writer in list(self._writers):
            writer.close()

    def heal(self) -> None:
        self.refusing = False
        self.delay_seconds = 0.0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.close()
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers.update({writer, upstream_writer})

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError, asyncio.CancelledError):
                while not self.refusing:
                    data = await source.read(65536)
                    if not data:
                        break
                    if self.delay_seconds:
                        await asyncio.sleep(self.delay_seconds)
                    sink.write(data)
                    await sink.drain()
            sink.close()

        with contextlib.suppress(asyncio.CancelledError):  # stopped with the proxy
            await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))
        self._writers.difference_update({writer, upstream_writer})

    async def stop(self) -> None:
        await self.refuse()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
