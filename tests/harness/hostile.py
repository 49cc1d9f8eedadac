"""Hostile peers on loopback for the hardening tests: servers that accept and never answer, trickle, or redirect.

Each runs in daemon threads of the test process and stops with ``stop()``.
"""

from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class SilentServer:
    """Accepts TCP connections and never sends a byte (a frozen process, a black-holed path)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.held = []
        self.running = True
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while self.running:
            try:
                conn, _addr = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def stop(self):
        self.running = False
        for conn in self.held:
            conn.close()
        self.sock.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True


class HostileHTTP:
    """Routes:
      /trickle        200 with a body sent one byte a second (never done within a probe's timeout)
      /trickle-head   the status line and headers one byte a second
      /redirect?to=U  302 to U
      /echo           200 with the request's headers as JSON (what a redirect target received)
      /basic          200 only with Authorization: Basic base64(user:password) of ``basic``, else 401
    """

    def __init__(self, basic=("ops", "p@ss w0rd")):
        self.basic = basic
        self.seen = []
        self.httpd = _Server(("127.0.0.1", 0), self._handler())
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def base_url(self):
        return "http://127.0.0.1:%d" % self.port

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _trickle(self, data):
                for byte in data:
                    try:
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                    except OSError:
                        return
                    time.sleep(1)

            def do_GET(self):
                import base64
                import json
                from urllib.parse import parse_qs, urlsplit

                parts = urlsplit(self.path)
                server.seen.append({"path": parts.path, "headers": dict(self.headers.items())})
                if parts.path == "/trickle":
                    self.send_response(200)
                    self.send_header("Content-Length", "100")
                    self.end_headers()
                    self._trickle(b"x" * 100)
                elif parts.path == "/trickle-head":
                    self._trickle(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                elif parts.path == "/redirect":
                    self.send_response(302)
                    self.send_header("Location", parse_qs(parts.query)["to"][0])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                else:
                    if parts.path == "/basic":
                        expected = "Basic " + base64.b64encode(("%s:%s" % server.basic).encode()).decode()
                        code = 200 if self.headers.get("Authorization") == expected else 401
                    else:
                        code = 200
                    body = json.dumps({"status": "healthy" if code == 200 else "unauthorized",
                                       "headers": dict(self.headers.items())}).encode()
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)

        return Handler
