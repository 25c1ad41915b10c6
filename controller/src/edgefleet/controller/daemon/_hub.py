"""The daemon's HTTP connections without a thread each: one thread, the hub, accepts them,
completes TLS handshakes, gathers request heads and sends every answer, never blocking (one
selector); a worker from a small pool turns a whole head into a reply. An idle keep-alive
connection, a trickling head or a slow reader holds no thread; each state has a timeout."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import selectors
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ._conns import (
    Connection,
    ConnectionLimits,
    Phase,
    Reply,
    Request,
    Serve,
    SharedFiles,
    listen,
)
from ._wire import RESPONSE_CHUNK, Deadlines, Reminder, head_complete, plain_answer

log = logging.getLogger("edgefleet.controller.http")

SEND_TURN = 1 << 20  # bytes one connection may send per turn of the hub, so none hogs it
ACCEPT_TURN = 256  # connections accepted per turn, so a flood cannot starve the rest
ACCEPT_PAUSE_S = 0.25  # out of descriptors: stop accepting this long (the backlog waits)
LINGER_READS = 4  # reads of 64 KiB at most, to drain a closing connection's unread input
BUSY = plain_answer(503, "Service Unavailable", "too many open connections; retry shortly\n",
                    ("Retry-After: 1",))  # fmt: skip
HEAD_TIMED_OUT = plain_answer(408, "Request Timeout", "the request's head did not arrive in time\n")
# what the selector watches a connection for in each state (nothing while a worker has it)
WATCH = {Phase.HANDSHAKE: selectors.EVENT_READ, Phase.IDLE: selectors.EVENT_READ,
         Phase.HEAD: selectors.EVENT_READ, Phase.SENDING: selectors.EVENT_WRITE}  # fmt: skip
_WOULD_BLOCK = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


class ConnectionHub:
    """Listens on ``address`` and answers every request with ``serve`` on a worker.
    ``serve_forever`` runs the hub on the calling thread until ``shutdown``."""

    def __init__(
        self,
        address: tuple[str, int],
        serve: Serve,
        limits: ConnectionLimits,
        *,
        tls: ssl.SSLContext | None = None,
        probes: Iterable[bytes] = (),
    ) -> None:
        self.listener = listen(address)
        self.server_address: tuple[Any, ...] = self.listener.getsockname()
        self.serve, self.limits, self.tls = serve, limits, tls
        self.probes = frozenset(probes)  # request paths the probe pool answers
        self.refused = 0  # connections turned away over the cap, since the start
        self.open: set[Connection] = set()  # changed on the hub's thread only
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._replies: deque[tuple[Connection, Reply | None]] = deque()
        self._files = SharedFiles()
        self._deadlines: dict[Phase, Deadlines[Connection]] = {
            Phase.HANDSHAKE: Deadlines(limits.head_timeout_s),
            Phase.IDLE: Deadlines(limits.idle_timeout_s),
            Phase.HEAD: Deadlines(limits.head_timeout_s),
            Phase.SENDING: Deadlines(limits.send_timeout_s),
        }
        self._workers = ThreadPoolExecutor(limits.workers, thread_name_prefix="http-worker")
        self._probes = ThreadPoolExecutor(limits.probe_workers, thread_name_prefix="http-probe")
        self._over_cap, self._out_of_fds = Reminder(60.0), Reminder(60.0)
        self._accept_paused_until: float | None = None
        self._stopping, self._stopped = threading.Event(), threading.Event()
        self._running = False

    # -- the loop --------------------------------------------------------------------

    def serve_forever(self) -> None:
        self._running = True
        self._selector.register(self.listener, selectors.EVENT_READ)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        try:
            while not self._stopping.is_set():
                for key, _ in self._selector.select(self._wait_s(time.monotonic())):
                    if key.fileobj is self.listener:
                        self._accept()
                    elif key.fileobj is self._wake_r:
                        self._drain_wake()
                    else:
                        self._ready(key.data)
                self._take_replies()
                now = time.monotonic()
                self._expire(now)
                if self._accept_paused_until is not None and now >= self._accept_paused_until:
                    self._accept_paused_until = None
                    self._selector.register(self.listener, selectors.EVENT_READ)
        finally:
            for conn in list(self.open):
                self._close(conn)
            self._workers.shutdown(wait=False, cancel_futures=True)
            self._probes.shutdown(wait=False, cancel_futures=True)
            self._stopped.set()

    def shutdown(self) -> None:
        """Stop the loop and close every connection; returns once the loop has ended."""
        self._stopping.set()
        self._wake()
        if self._running:
            self._stopped.wait(timeout=10)

    def server_close(self) -> None:
        for closable in (self.listener, self._selector, self._wake_r, self._wake_w):
            closable.close()

    def _wait_s(self, now: float) -> float | None:
        soonest = [d.next_at() for d in self._deadlines.values()]
        soonest.append(self._accept_paused_until)
        when = min((t for t in soonest if t is not None), default=None)
        return None if when is None else max(0.0, when - now)

    def _wake(self) -> None:
        # full already (the hub will wake anyway), or closed (it has stopped)
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:
            pass  # drained

    # -- accepting -------------------------------------------------------------------

    def _accept(self) -> None:
        for _ in range(ACCEPT_TURN):
            try:
                sock, address = self.listener.accept()
            except _WOULD_BLOCK:
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._pause_accepting(exc)
                    return
                continue  # aborted before it was accepted: nothing to do
            if len(self.open) >= self.limits.max_connections:
                self._refuse(sock)
                continue
            sock.setblocking(False)
            # the head goes out, then the body: Nagle would hold the body for the client's
            # delayed ACK (40 ms on Linux) on every small reply
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            phase = Phase.IDLE
            if self.tls is not None:  # no I/O here: the handshake runs as bytes come
                try:
                    sock = self.tls.wrap_socket(
                        sock, server_side=True, do_handshake_on_connect=False
                    )
                except OSError:
                    sock.close()
                    continue
                phase = Phase.HANDSHAKE
            conn = Connection(sock, str(address[0]))
            self.open.add(conn)
            self._enter(conn, phase)

    def _refuse(self, sock: socket.socket) -> None:
        self.refused += 1
        try:
            sock.setblocking(False)
            if self.tls is None:  # over TLS there is no replying before a handshake
                sock.send(BUSY)
        except OSError:
            pass  # the client is gone already: nobody to tell
        sock.close()
        if (count := self._over_cap.due(time.monotonic())) is not None:
            log.warning(
                "refused %d connection(s) in the last minute: %d are open, the cap is %d "
                "(max_connections; each device keeps one while it downloads)",
                count, len(self.open), self.limits.max_connections,
            )  # fmt: skip

    def _pause_accepting(self, exc: OSError) -> None:
        now = time.monotonic()
        self._selector.unregister(self.listener)
        self._accept_paused_until = now + ACCEPT_PAUSE_S
        if (count := self._out_of_fds.due(now)) is not None:
            log.warning(
                "cannot accept connections (%d time(s) in the last minute): %s, with %d open;"
                " raise the open-files limit (LimitNOFILE)", count, exc.strerror, len(self.open)
            )  # fmt: skip

    # -- connections, by their state -------------------------------------------------

    def _enter(self, conn: Connection, phase: Phase) -> None:
        """Move ``conn`` to ``phase``: what the selector watches it for, and its deadline."""
        was = self._deadlines.get(conn.phase)
        if was is not None:
            was.disarm(conn)
        conn.phase = phase
        self._watch(conn, WATCH.get(phase, 0))
        if (deadlines := self._deadlines.get(phase)) is not None:
            conn.deadline = deadlines.arm(conn, time.monotonic())
            conn.sent_unarmed = 0

    def _watch(self, conn: Connection, events: int) -> None:
        if events == conn.events:
            return
        if not conn.events:
            self._selector.register(conn.sock, events, conn)
        elif not events:
            self._selector.unregister(conn.sock)
        else:
            self._selector.modify(conn.sock, events, conn)
        conn.events = events

    def _ready(self, conn: Connection) -> None:
        if conn.phase is Phase.HANDSHAKE:
            self._handshake(conn)
        elif conn.phase in (Phase.IDLE, Phase.HEAD):
            self._read(conn)
        elif conn.phase is Phase.SENDING:
            self._send(conn)

    def _handshake(self, conn: Connection) -> None:
        assert isinstance(conn.sock, ssl.SSLSocket)
        try:
            conn.sock.do_handshake()
        except ssl.SSLWantReadError:
            self._watch(conn, selectors.EVENT_READ)
            return
        except ssl.SSLWantWriteError:
            self._watch(conn, selectors.EVENT_WRITE)
            return
        except OSError as exc:  # ssl.SSLError too: not TLS, a bad client
            log.debug("%s: TLS handshake failed: %s", conn.peer, exc)
            self._close(conn)
            return
        self._enter(conn, Phase.IDLE)
        self._read(conn)  # the request may have come with the handshake's last flight

    def _read(self, conn: Connection) -> None:
        """Gather the head; hand the connection to a worker once it is whole (or too long)."""
        room = self.limits.max_head_bytes + 1 - len(conn.ahead)
        scanned = max(0, len(conn.ahead) - 3)
        try:
            while room > 0:
                chunk = conn.sock.recv(min(room, 1 << 16))
                if not chunk:  # the client closed; half a head is no request
                    self._close(conn)
                    return
                conn.ahead += chunk
                room -= len(chunk)
                # TLS may keep decrypted bytes that the selector cannot see
                if not (isinstance(conn.sock, ssl.SSLSocket) and conn.sock.pending()):
                    break
        except _WOULD_BLOCK:
            pass
        except OSError as exc:
            log.debug("%s: connection lost: %s", conn.peer, exc)
            self._close(conn)
            return
        self._next_request(conn, scanned)

    def _next_request(self, conn: Connection, scanned: int = 0) -> None:
        if head_complete(conn.ahead, scanned) or len(conn.ahead) > self.limits.max_head_bytes:
            self._dispatch(conn)
        elif conn.ahead and conn.phase is not Phase.HEAD:
            self._enter(conn, Phase.HEAD)

    def _dispatch(self, conn: Connection) -> None:
        deadline = conn.deadline
        if conn.phase is not Phase.HEAD:
            deadline = time.monotonic() + self.limits.head_timeout_s
        request = Request(conn.sock, conn.peer, bytes(conn.ahead), deadline)
        probe = self._path(conn.ahead) in self.probes
        conn.ahead = bytearray()
        self._enter(conn, Phase.WORKING)
        (self._probes if probe else self._workers).submit(self._work, conn, request)

    @staticmethod
    def _path(head: bytes | bytearray) -> bytes:
        words = bytes(head[: head.find(b"\n")]).split()
        return words[1].partition(b"?")[0] if len(words) >= 2 else b""

    def _work(self, conn: Connection, request: Request) -> None:
        """On a worker: reply, then give the connection back to the hub."""
        try:
            reply: Reply | None = self.serve(request)
        except Exception:  # a bug: say so, close this connection, keep serving the rest
            log.exception("%s: no reply: a bug in the HTTP server", request.peer)
            reply = None
        self._replies.append((conn, reply))
        self._wake()

    def _take_replies(self) -> None:
        while self._replies:
            conn, reply = self._replies.popleft()
            if conn.phase is not Phase.WORKING:  # closed meanwhile (shutdown)
                if reply is not None and reply.file is not None:
                    reply.file.close()
                continue
            conn.sock.settimeout(0.0)  # the worker may have read a body with a timeout
            if reply is None:
                self._close(conn)
                continue
            conn.ahead = bytearray(reply.ahead)
            conn.out, conn.keep_alive = memoryview(reply.out), reply.keep_alive
            if reply.file is not None:
                conn.file = self._files.share(reply.file)
                conn.file_offset, conn.file_left = reply.offset, reply.length
            self._enter(conn, Phase.SENDING)
            self._send(conn)

    def _send(self, conn: Connection) -> None:
        budget = SEND_TURN
        try:
            while budget > 0 and (conn.out or conn.file_left):
                if conn.out:
                    sent = conn.sock.send(conn.out[:RESPONSE_CHUNK])
                    conn.out = conn.out[sent:]
                else:
                    sent = self._send_file(conn, budget)
                budget -= sent
                conn.sent_unarmed += sent
                if conn.sent_unarmed >= RESPONSE_CHUNK:  # progress: a new deadline
                    self._enter(conn, Phase.SENDING)
        except _WOULD_BLOCK:
            return  # the selector says when it can take more
        except OSError as exc:  # reset, broken pipe, a file cut short: close
            log.debug("%s: client went away: %s", conn.peer, exc)
            self._close(conn)
            return
        if conn.out or conn.file_left:
            return  # this turn's share sent; more when the selector comes back to it
        self._close_file(conn)
        if not conn.keep_alive:
            self._close(conn)
            return
        self._enter(conn, Phase.IDLE)
        self._next_request(conn)  # a pipelined request, read with this one, goes next

    def _send_file(self, conn: Connection, budget: int) -> int:
        assert conn.file is not None
        fd, want = conn.file.fileno(), min(conn.file_left, budget)
        if isinstance(conn.sock, ssl.SSLSocket):
            # Asked again after SSLWantWriteError, OpenSSL wants the same bytes: the same
            # offset of a content-addressed file is.
            sent = conn.sock.send(os.pread(fd, min(want, RESPONSE_CHUNK), conn.file_offset))
        else:
            sent = os.sendfile(conn.sock.fileno(), fd, conn.file_offset, want)
        if sent == 0:
            raise OSError(errno.EIO, "the file ended before its promised length")
        conn.file_offset += sent
        conn.file_left -= sent
        return sent

    def _expire(self, now: float) -> None:
        for phase, deadlines in self._deadlines.items():
            for conn in deadlines.due(now):
                if phase is Phase.HEAD:  # a request was started: say why it gets no reply
                    log.debug("%s: the head timed out, replying 408", conn.peer)
                    conn.ahead.clear()
                    conn.out, conn.keep_alive = memoryview(HEAD_TIMED_OUT), False
                    self._enter(conn, Phase.SENDING)
                    self._send(conn)
                    continue
                log.debug("%s: %s timed out, closing the connection", conn.peer, phase.value)
                self._close(conn)

    def _close(self, conn: Connection) -> None:
        lingering = conn.phase is Phase.SENDING and not conn.out and not conn.file_left
        self._enter(conn, Phase.CLOSED)
        self.open.discard(conn)
        self._close_file(conn)
        # unread input would make close() send a reset, which can destroy the reply before
        # the client reads it (a head over the cap): read what is here first
        with contextlib.suppress(OSError):  # nothing more to read, or the client is gone
            if lingering and not isinstance(conn.sock, ssl.SSLSocket):
                for _ in range(LINGER_READS):
                    if not conn.sock.recv(1 << 16):
                        break
        conn.sock.close()

    def _close_file(self, conn: Connection) -> None:
        if conn.file is not None:
            self._files.release(conn.file)
            conn.file, conn.file_left = None, 0
