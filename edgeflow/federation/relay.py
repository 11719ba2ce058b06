"""Byte-counting TCP relays: a SuperNode reaches its SuperLink through one, so the bytes a link
carried are measured, not estimated (TLS records, HTTP framing and retries included). All relays
run on one asyncio loop in a background thread; every count is kept with its time, so the bytes
of a round are the difference of two instants the ServerApp recorded."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import threading
import time
from dataclasses import dataclass, field


@dataclass
class Link:
    """One relayed link: `up` is towards the SuperLink, `down` back."""

    name: str
    target: tuple[str, int]
    port: int = 0
    _times: list[float] = field(default_factory=list)
    _totals: list[tuple[int, int]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _up: int = 0
    _down: int = 0

    def count(self, up: int, down: int) -> None:
        with self._lock:
            self._up += up
            self._down += down
            self._times.append(time.time())
            self._totals.append((self._up, self._down))

    def at(self, t: float) -> tuple[int, int]:
        """The bytes (up, down) carried until wall-clock time `t`."""
        with self._lock:
            i = bisect.bisect_right(self._times, t)
            return self._totals[i - 1] if i else (0, 0)

    def total(self) -> tuple[int, int]:
        with self._lock:
            return self._up, self._down


class Relays:
    """The relays of a federation; `add` opens one on 127.0.0.1 (an ephemeral port)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.links: list[Link] = []
        self._servers: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._thread = threading.Thread(target=self.loop.run_forever, name="edgeflow-relays",
                                        daemon=True)
        self._thread.start()

    def add(self, name: str, target: tuple[str, int]) -> Link:
        link = Link(name, target)
        future = asyncio.run_coroutine_threadsafe(self._listen(link), self.loop)
        future.result(timeout=10)
        self.links.append(link)
        return link

    async def _listen(self, link: Link) -> None:
        server = await asyncio.start_server(
            lambda r, w: self._serve(link, r, w), "127.0.0.1", 0)
        link.port = int(server.sockets[0].getsockname()[1])
        self._servers.append(server)

    async def _serve(self, link: Link, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            try:
                up_reader, up_writer = await asyncio.open_connection(*link.target)
            except OSError:
                return
            try:
                await asyncio.gather(_pump(reader, up_writer, link, up=True),
                                     _pump(up_reader, writer, link, up=False))
            finally:
                up_writer.close()
        finally:
            writer.close()
            self._tasks.discard(task)

    def close(self) -> None:
        async def shutdown() -> None:
            for server in self._servers:
                server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.sleep(0)

        if self.loop.is_running():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(timeout=5)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=5)
        if not self.loop.is_running():
            self.loop.close()


async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, link: Link, *,
                up: bool) -> None:
    try:
        while data := await src.read(1 << 16):
            link.count(len(data) if up else 0, 0 if up else len(data))
            dst.write(data)
            await dst.drain()
        if dst.can_write_eof():
            dst.write_eof()
    except (ConnectionError, OSError):
        dst.close()
