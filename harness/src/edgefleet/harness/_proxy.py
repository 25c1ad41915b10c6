"""A TCP proxy of our own between a client and a loopback service, for fault injection: cut
every connection, hold all traffic in a silent partition (a blackhole), delay it, and heal.

One asyncio loop in a daemon thread runs every connection; the controls may be called from
any thread and return once the proxy acts on them (a cut connection is closed when
``cut()`` returns). What a peer sends is read into a bounded buffer per direction and
written on when the link lets it: at once, after the delay, or after ``heal()``. Nothing
is ever dropped but by a cut, so a blackhole behaves like a partition that TCP outlives:
what was sent during it arrives after it, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import threading
from collections.abc import Coroutine
from enum import StrEnum
from types import TracebackType
from typing import Any

CHUNK_BYTES = 64 * 1024
# what a direction of one connection may hold (blackholed or delayed) before the proxy stops
# reading it, so the sender feels TCP's back-pressure: 256 chunks, 16 MiB at most
HELD_CHUNKS = 256
CONNECT_TIMEOUT_S = 5.0
CONTROL_TIMEOUT_S = 10.0


class LinkState(StrEnum):
    """What the proxy does with traffic."""

    FLOWING = "flowing"  # forwarded, after the delay if one is set
    CUT = "cut"  # every connection closed, new ones closed as soon as accepted
    BLACKHOLE = "blackhole"  # connections accepted and kept, nothing forwarded either way


class _Connection:
    """One client connection and, once the link lets it through, its upstream one."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.writers = [client]
        self.tasks: set[asyncio.Task[None]] = set()
        self.held = 0  # bytes read from one side, not yet written to the other

    def close(self) -> None:
        """The end of a conversation: what is buffered is sent, then FIN."""
        self._stop_tasks()
        for writer in self.writers:
            writer.close()

    def abort(self) -> None:
        """A cut or a failure: both sockets reset, whatever is buffered is dropped."""
        self._stop_tasks()
        for writer in self.writers:
            writer.transport.abort()

    def _stop_tasks(self) -> None:
        current = asyncio.current_task()
        for task in self.tasks:
            if task is not current:
                task.cancel()


class TcpProxy:
    """Listens on 127.0.0.1 (``port``, or a free one) and forwards to a loopback target.

    ``with TcpProxy(broker.port) as proxy:`` starts it and closes it; in between, ``cut()``,
    ``blackhole()``, ``delay(seconds)`` and ``heal()`` switch the fault."""

    def __init__(self, target_port: int, *, target_host: str = "127.0.0.1", port: int = 0):
        try:
            loopback = ipaddress.ip_address(target_host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ValueError(f"the proxy forwards to loopback addresses only, not {target_host}")
        self.target = (target_host, target_port)
        self.port = port
        self.state = LinkState.FLOWING
        self.delay_s = 0.0
        self.accepted = 0  # connections accepted since start
        self.forwarded_bytes = 0
        self._connections: set[_Connection] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flowing: asyncio.Event | None = None
        self._server: asyncio.Server | None = None
        self._stopped: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    # -- controls, from any thread -------------------------------------------------------

    def start(self) -> TcpProxy:
        ready = threading.Event()
        failed: list[BaseException] = []
        self._thread = threading.Thread(
            target=self._run, args=(ready, failed), name=f"proxy->{self.target[1]}", daemon=True
        )
        self._thread.start()
        if not ready.wait(CONTROL_TIMEOUT_S):
            raise RuntimeError("the proxy did not start")
        if failed:
            self._loop = None
            raise failed[0]
        return self

    @property
    def connections(self) -> int:
        """Client connections open now."""
        return len(self._connections)

    @property
    def held_bytes(self) -> int:
        """Bytes read from one side and not yet written to the other (blackholed, delayed)."""
        return sum(c.held for c in list(self._connections))

    def url(self, scheme: str, path: str = "") -> str:
        """The proxy's address as a URL, e.g. ``url("mqtt")`` or ``url("http", "/artifacts/")``."""
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def cut(self) -> None:
        """Close every connection (abortively) and close new ones at once, until ``heal()``."""
        self._call(self._set(LinkState.CUT))

    def blackhole(self) -> None:
        """Keep and accept connections but forward nothing either way, until ``heal()``."""
        self._call(self._set(LinkState.BLACKHOLE))

    def delay(self, seconds: float) -> None:
        """Hold each chunk read from either side ``seconds`` before writing it on."""
        if seconds < 0:
            raise ValueError("a delay cannot be negative")
        self.delay_s = seconds

    def heal(self) -> None:
        """Forward again, at once: no fault and no delay; what was held goes on, in order."""
        self.delay_s = 0.0
        self._call(self._set(LinkState.FLOWING))

    def close(self) -> None:
        """Close every connection and the listener, and stop the thread."""
        if self._loop is None or self._thread is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop ended already
            self._call(self._shutdown())
        self._thread.join(CONTROL_TIMEOUT_S)
        self._loop = None

    def __enter__(self) -> TcpProxy:
        return self if self._thread else self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _call(self, coro: Coroutine[Any, Any, None]) -> None:
        if self._loop is None:
            coro.close()
            raise RuntimeError("the proxy is not running")
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(CONTROL_TIMEOUT_S)

    # -- the loop ------------------------------------------------------------------------

    def _run(self, ready: threading.Event, failed: list[BaseException]) -> None:
        asyncio.run(self._main(ready, failed))

    async def _main(self, ready: threading.Event, failed: list[BaseException]) -> None:
        self._loop = asyncio.get_running_loop()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._stopped = asyncio.Event()
        try:
            self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        except OSError as exc:
            failed.append(exc)
            ready.set()
            return
        self.port = self._server.sockets[0].getsockname()[1]
        ready.set()
        await self._stopped.wait()

    async def _set(self, state: LinkState) -> None:
        assert self._flowing is not None
        self.state = state
        if state is LinkState.FLOWING:
            self._flowing.set()
            return
        self._flowing.clear()
        if state is LinkState.CUT:
            for connection in list(self._connections):
                await self._drop(connection)

    async def _shutdown(self) -> None:
        assert self._server is not None and self._stopped is not None
        self._server.close()
        for connection in list(self._connections):
            await self._drop(connection)
        self._stopped.set()

    async def _drop(self, connection: _Connection) -> None:
        connection.abort()
        await asyncio.gather(*connection.tasks, return_exceptions=True)
        self._connections.discard(connection)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.state is LinkState.CUT:
            writer.transport.abort()
            return
        connection = _Connection(writer)
        self._connections.add(connection)
        task = asyncio.create_task(self._link(connection, reader, writer))
        connection.tasks.add(task)
        try:
            await task
            connection.close()
        except asyncio.CancelledError:
            connection.abort()  # cut, failed, or the proxy closing
        finally:
            self._connections.discard(connection)

    async def _link(
        self,
        connection: _Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        """Read the client at once; connect upstream only when traffic may flow (a client
        that connects into a blackhole has reached nobody yet); then pump both ways."""
        assert self._flowing is not None
        up: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(HELD_CHUNKS)
        down: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(HELD_CHUNKS)
        client_read = asyncio.create_task(self._read(connection, reader, up))
        connection.tasks.add(client_read)
        await self._flowing.wait()
        try:
            target_reader, target_writer = await asyncio.wait_for(
                asyncio.open_connection(*self.target), CONNECT_TIMEOUT_S
            )
        except (OSError, TimeoutError):
            return  # the target is down: the client sees its connection close
        connection.writers.append(target_writer)
        pumps = [
            asyncio.create_task(self._write(connection, up, target_writer)),
            asyncio.create_task(self._read(connection, target_reader, down)),
            asyncio.create_task(self._write(connection, down, writer)),
        ]
        connection.tasks.update(pumps)
        await asyncio.gather(client_read, *pumps)

    async def _read(
        self,
        connection: _Connection,
        reader: asyncio.StreamReader,
        held: asyncio.Queue[tuple[float, bytes]],
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                data = await reader.read(CHUNK_BYTES)
                connection.held += len(data)
                await held.put((loop.time() + self.delay_s, data))
                if not data:  # end of stream: passed on like the data before it
                    return
        except OSError:
            connection.abort()

    async def _write(
        self,
        connection: _Connection,
        held: asyncio.Queue[tuple[float, bytes]],
        writer: asyncio.StreamWriter,
    ) -> None:
        assert self._flowing is not None
        loop = asyncio.get_running_loop()
        try:
            while True:
                due, data = await held.get()
                while not (self._flowing.is_set() and loop.time() >= due):
                    await self._flowing.wait()
                    await asyncio.sleep(max(0.0, due - loop.time()))
                connection.held -= len(data)
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()
                self.forwarded_bytes += len(data)
        except OSError:
            connection.abort()
