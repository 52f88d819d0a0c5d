"""A canary HTTP server on 127.0.0.1 for the outbound-policy tests: it records every request
it gets (so a test can assert it got none) and can dribble its answer a byte a second."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

DRIBBLE_BYTES = 1000


class Canary(ThreadingHTTPServer):
    """``/redirect?to=URL`` answers 302 to URL (unquoted), ``/dribble`` (every path when
    ``dribble`` is set) one byte a second until ``stop`` is set, anything else a small body."""

    daemon_threads = True

    def __init__(self, dribble: bool = False) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[tuple[str, str | None]] = []  # path, Host header
        self.dribble = dribble
        self.stop = threading.Event()

    @property
    def port(self) -> int:
        return self.server_address[1]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def paths(self) -> list[str]:
        return [path for path, _host in self.requests]


class _Handler(BaseHTTPRequestHandler):
    server: Canary

    def do_GET(self) -> None:
        self.server.requests.append((self.path, self.headers.get("Host")))
        if self.path.startswith("/redirect"):
            self._answer(302, b"", Location=unquote(self.path.split("to=", 1)[1]))
        elif self.server.dribble or self.path.startswith("/dribble"):
            self._dribble()
        else:
            self._answer(200, b"canary", **{"Content-Type": "image/png"})

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.do_GET()

    def _answer(self, code: int, body: bytes, **headers: str) -> None:
        self.send_response(code)
        for name, value in {"Content-Length": str(len(body)), **headers}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _dribble(self) -> None:
        """Each read gets a byte quickly; the whole answer never comes."""
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(DRIBBLE_BYTES))
        self.end_headers()
        for _ in range(DRIBBLE_BYTES):
            if self.server.stop.wait(1.0):
                return
            try:
                self.wfile.write(b"x")
                self.wfile.flush()
            except OSError:
                return

    def log_message(self, *args: object) -> None:
        pass


def serve(server: Canary) -> Iterator[Canary]:
    """Run ``server`` on a thread for a fixture; stopped (and dribbles cut) afterwards."""
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.stop.set()
    server.shutdown()
    server.server_close()
    thread.join(5)
