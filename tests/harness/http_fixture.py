"""A small threaded HTTP server on loopback that answers like a platform's /health endpoints.

Routes (GET):
  /health          200 {"status": "healthy", "checks": {"database": {"status": "healthy"}, ...}}
  /health/down     503 {"status": "unhealthy", "checks": {"database": {"status": "unhealthy"}}}
  /health/slow     200 healthy, after ``slow_seconds``
  /health/flaky    503 for the first ``flaky_failures`` requests, then 200
  /text            200 text/plain "pong"
  /auth            200 only with header Authorization: Bearer <token>, else 401
  /n/<i>           200 {"status": "healthy", "n": i}   (many distinct targets for the benchmark)
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # socketserver's default of 5 drops SYNs under concurrent probes (1 s retransmit)


HEALTHY = {"status": "healthy", "timestamp": "2026-01-26T10:30:00Z",
           "checks": {"database": {"status": "healthy", "latency": "2ms"}, "redis": {"status": "healthy"}},
           "components": ["web", "worker"]}
UNHEALTHY = {"status": "unhealthy", "timestamp": "2026-01-26T10:30:00Z",
             "checks": {"database": {"status": "unhealthy", "message": "connection refused"}, "redis": {"status": "healthy"}}}


class HealthServer:
    def __init__(self, slow_seconds=1.5, flaky_failures=2, token="s3cr3t-token"):
        self.slow_seconds = slow_seconds
        self.flaky_failures = flaky_failures
        self.token = token
        self.flaky_calls = 0
        self.requests = 0
        self.lock = threading.Lock()
        self.httpd = _Server(("127.0.0.1", 0), self._handler())
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self):
        return "http://127.0.0.1:%d" % self.port

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send(self, code, payload, content_type="application/json"):
                body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                with server.lock:
                    server.requests += 1
                path = self.path.split("?")[0]
                if path == "/health":
                    self._send(200, HEALTHY)
                elif path == "/health/down":
                    self._send(503, UNHEALTHY)
                elif path == "/health/slow":
                    time.sleep(server.slow_seconds)
                    self._send(200, HEALTHY)
                elif path == "/health/flaky":
                    with server.lock:
                        server.flaky_calls += 1
                        failing = server.flaky_calls <= server.flaky_failures
                    self._send(503 if failing else 200, UNHEALTHY if failing else HEALTHY)
                elif path == "/text":
                    self._send(200, b"pong", "text/plain")
                elif path == "/auth":
                    ok = self.headers.get("Authorization") == "Bearer %s" % server.token
                    self._send(200 if ok else 401, {"status": "healthy" if ok else "unauthorized"})
                elif path.startswith("/n/"):
                    self._send(200, {"status": "healthy", "n": path[3:]})
                else:
                    self._send(404, {"error": "not found"})

            do_HEAD = do_GET

        return Handler
