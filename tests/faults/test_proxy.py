"""The fault-injecting TCP proxy against a tiny echo server: it forwards both ways intact and
in order; a cut closes every connection and turns new ones away; a blackhole keeps
connections and holds what is sent until it heals; a delay holds each chunk both ways."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from edgefleet.harness import TcpProxy, free_port, wait_until


class EchoServer(socketserver.ThreadingTCPServer):
    """Echoes every byte back and notes when each chunk arrived (time.monotonic())."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Echo)
        self.port = int(self.server_address[1])
        self.lock = threading.Lock()
        self.accepted = 0
        self.received: list[tuple[float, bytes]] = []
        self.thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)

    def got(self) -> bytes:
        with self.lock:
            return b"".join(data for _, data in self.received)


class _Echo(socketserver.BaseRequestHandler):
    server: EchoServer

    def handle(self) -> None:
        with self.server.lock:
            self.server.accepted += 1
        self.request.settimeout(30)
        while data := self.request.recv(65536):
            with self.server.lock:
                self.server.received.append((time.monotonic(), data))
            self.request.sendall(data)


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    server.thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def proxy(echo: EchoServer) -> Iterator[TcpProxy]:
    with TcpProxy(echo.port) as p:
        yield p


def connect(proxy: TcpProxy) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def receive(s: socket.socket, n: int) -> bytes:
    got = b""
    while len(got) < n:
        chunk = s.recv(n - len(got))
        if not chunk:
            raise ConnectionError(f"closed after {len(got)} of {n} bytes")
        got += chunk
    return got


def closed(s: socket.socket) -> bool:
    """The peer closed (FIN or reset): what a client of a cut link sees."""
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True


def test_it_forwards_both_ways_intact_and_in_order(echo: EchoServer, proxy: TcpProxy) -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB: many chunks each way
    clients = [connect(proxy) for _ in range(3)]
    for i, s in enumerate(clients):
        sender = threading.Thread(target=s.sendall, args=(payload[i:],))
        sender.start()
        assert receive(s, len(payload) - i) == payload[i:]
        sender.join()
    assert proxy.connections == 3 and proxy.accepted == 3
    assert proxy.forwarded_bytes == 2 * sum(len(payload) - i for i in range(3))
    for s in clients:
        s.shutdown(socket.SHUT_WR)  # the echo server sees the end and closes: so does the proxy
        assert closed(s)
        s.close()
    wait_until(lambda: proxy.connections == 0, 10, "connections still open")


def test_a_cut_closes_every_connection_and_turns_new_ones_away_until_healed(
    echo: EchoServer, proxy: TcpProxy
) -> None:
    before = connect(proxy)
    before.sendall(b"ping")
    assert receive(before, 4) == b"ping"
    proxy.cut()
    assert closed(before)  # closed by the time cut() returned
    assert proxy.connections == 0

    during = connect(proxy)  # accepted by the proxy, then closed at once
    assert closed(during)
    assert echo.accepted == 1  # the turned-away connection never reached the server

    proxy.heal()
    after = connect(proxy)
    after.sendall(b"pong")
    assert receive(after, 4) == b"pong"
    assert echo.accepted == 2
    for s in (before, during, after):
        s.close()


def test_a_blackhole_keeps_connections_and_holds_all_traffic_until_healed(
    echo: EchoServer, proxy: TcpProxy
) -> None:
    kept = connect(proxy)
    kept.sendall(b"before ")
    assert receive(kept, 7) == b"before "
    proxy.blackhole()
    kept.sendall(b"during")
    late = connect(proxy)  # a connection into the partition reaches nobody yet
    late.sendall(b"late")
    wait_until(lambda: proxy.held_bytes == len(b"during") + len(b"late"), 10, "nothing held")
    assert echo.got() == b"before "  # held by the proxy, not forwarded
    assert echo.accepted == 1 and proxy.connections == 2

    healed_at = time.monotonic()
    proxy.heal()
    assert receive(kept, 6) == b"during"  # the same connection, still open
    assert receive(late, 4) == b"late"
    assert echo.accepted == 2
    with echo.lock:
        after_heal = [when for when, data in echo.received if data in (b"during", b"late")]
    assert len(after_heal) == 2 and min(after_heal) >= healed_at
    assert proxy.held_bytes == 0
    for s in (kept, late):
        s.close()


def test_a_blackhole_holds_the_servers_answers_too(echo: EchoServer, proxy: TcpProxy) -> None:
    s = connect(proxy)
    proxy.delay(0.5)  # the answer is still on its way back when the blackhole starts
    s.sendall(b"question")
    wait_until(lambda: echo.got() == b"question", 10, "the question never arrived")
    proxy.blackhole()
    answered_at = echo.received[0][0]
    # still held after its delay ran out: the blackhole, not the delay, keeps it
    wait_until(
        lambda: time.monotonic() > answered_at + 0.7 and proxy.held_bytes == len(b"question"),
        10,
        "the answer is not held past its delay",
    )
    proxy.heal()
    assert receive(s, 8) == b"question"
    s.close()


def test_a_delay_holds_each_chunk_that_long_each_way_and_keeps_the_order(
    echo: EchoServer, proxy: TcpProxy
) -> None:
    s = connect(proxy)
    proxy.delay(0.3)
    sent_at = time.monotonic()
    for i in range(5):
        s.sendall(b"%d," % i)
    assert receive(s, 10) == b"0,1,2,3,4,"
    round_trip = time.monotonic() - sent_at
    with echo.lock:
        first_arrival = echo.received[0][0]
    # lower bounds only: the delay is what is tested, a slow host only adds to it
    assert first_arrival - sent_at >= 0.3
    assert round_trip >= 0.6

    proxy.heal()  # no delay any more
    s.sendall(b"x")
    assert receive(s, 1) == b"x"
    assert proxy.delay_s == 0.0
    s.close()


def test_a_target_that_is_down_closes_the_client_connection() -> None:
    with TcpProxy(free_port()) as proxy:
        s = connect(proxy)
        assert closed(s)
        s.close()
        wait_until(lambda: proxy.connections == 0, 10, "the failed connection is still counted")


def test_only_loopback_targets_and_close_stops_everything(echo: EchoServer) -> None:
    for host in ("10.0.0.1", "example.org"):
        with pytest.raises(ValueError, match="loopback"):
            TcpProxy(echo.port, target_host=host)
    proxy = TcpProxy(echo.port).start()
    s = connect(proxy)
    s.sendall(b"hi")
    assert receive(s, 2) == b"hi"
    proxy.close()
    assert closed(s)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    assert proxy._thread is not None and not proxy._thread.is_alive()
    with pytest.raises(RuntimeError, match="not running"):
        proxy.cut()
    s.close()
