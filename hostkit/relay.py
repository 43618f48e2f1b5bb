"""A containerised engine's published port: TCP on the overlay address, relayed to the engine's Unix socket.

The engine container has no network (``hostkit.container``): vLLM listens on a Unix socket in a folder the
agent shares with it, and this relay, run by the agent, is the one way in. Each connection accepted on
``host:port`` is joined byte for byte to a new connection to the socket, in both directions, until either side
closes. Nothing is parsed: what the hub sends reaches vLLM as it was sent, streams included.

    relay = Relay("10.90.0.7", 8000, Path("/var/lib/hostkit/engine/run/engine.sock")).start()
    ...
    relay.stop()
"""
from __future__ import annotations

import asyncio
import socket
import threading
from pathlib import Path

CHUNK = 64 * 1024


class Relay:
    def __init__(self, host: str, port: int, socket_path: Path):
        self.host, self.port, self.socket_path = host, port, socket_path
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._connections: dict[asyncio.Task, list[asyncio.StreamWriter]] = {}  # each one's open ends

    def start(self) -> Relay:
        """Listen on ``host:port`` (OSError when it cannot), relaying in a thread of its own."""
        loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=loop.run_forever, name=f"relay {self.host}:{self.port}", daemon=True)
        self._thread.start()
        self._loop = loop
        try:
            self._server = asyncio.run_coroutine_threadsafe(self._listen(), loop).result()
        except BaseException:
            self.stop()
            raise
        return self

    async def _listen(self) -> asyncio.base_events.Server:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        return await asyncio.start_server(self._accepted, self.host, self.port, family=family, reuse_address=True)

    async def _accepted(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._connections[task] = [client_writer]
        try:
            try:
                engine_reader, engine_writer = await asyncio.open_unix_connection(str(self.socket_path))
            except OSError:  # the engine is not listening (starting, or gone): the caller sees the connection close
                return
            self._connections[task].append(engine_writer)
            try:
                await asyncio.gather(_pipe(client_reader, engine_writer), _pipe(engine_reader, client_writer))
            finally:
                engine_writer.close()
        finally:
            client_writer.close()
            del self._connections[task]

    def stop(self) -> None:
        """Stop listening and cut every relayed connection. Idempotent."""
        loop, self._loop = self._loop, None
        if loop is None:
            return
        if loop.is_running():
            asyncio.run_coroutine_threadsafe(self._close(), loop).result(timeout=10)
            loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)
        loop.close()

    async def _close(self) -> None:
        """Close the listener and both ends of every connection: each relay ends as if its peers had gone."""
        if self._server is not None:
            self._server.close()
        for writers in self._connections.values():
            for writer in writers:
                writer.close()
        await asyncio.gather(*self._connections, return_exceptions=True)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until ``reader`` ends, then pass the end on (half-close), so the other direction can finish."""
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except OSError:  # a side went away: closing both (the caller's finally) ends the other direction too
        writer.close()
