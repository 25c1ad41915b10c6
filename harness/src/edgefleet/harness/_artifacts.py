"""An artifact HTTP server on loopback, with Range support and faults a test can switch on."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


@dataclass
class ServerFaults:
    bytes_per_s: float | None = None  # throttle
    extra_bytes: int = 0  # append garbage after the file (a stream longer than declared)
    drop_after: int | None = None  # close the connection after this many body bytes, once
    ignore_range: bool = False


@dataclass
class ArtifactServer:
    root: Path
    faults: ServerFaults = field(default_factory=ServerFaults)
    requests: list[tuple[str, str | None]] = field(default_factory=list)

    def start(self) -> ArtifactServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                path = (server.root / self.path.lstrip("/")).resolve()
                if server.root.resolve() not in path.parents or not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes() + b"\0" * server.faults.extra_bytes
                start = 0
                if rng and not server.faults.ignore_range and rng.startswith("bytes="):
                    start = int(rng[6:].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                self._send(body)

            def _send(self, body: bytes) -> None:
                faults = server.faults
                drop = faults.drop_after
                if drop is not None:
                    faults.drop_after = None
                    body = body[:drop]
                chunk = 16 * 1024
                for i in range(0, len(body), chunk):
                    piece = body[i : i + chunk]
                    try:
                        self.wfile.write(piece)
                        self.wfile.flush()
                    except OSError:
                        return
                    if faults.bytes_per_s:
                        time.sleep(len(piece) / faults.bytes_per_s)
                if drop is not None:
                    self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        # stop() waits for serve_forever's next poll: every 0.5 s by default, in every test
        threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return self

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
