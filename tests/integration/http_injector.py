"""The plumbing every HTTP fault injector of the tests shares (they are test stand-ins, not
Switchyard parts): a threaded HTTP server on a free loopback port that hands each GET and POST to
the injector's ``handle``, started and stopped with the test. The injectors themselves
(test_oom_breakers.py in front of llama.cpp, triton_fault.py in front of Triton) decide what to
answer and count it."""

from __future__ import annotations

import http.server
import threading
from typing import Any


class HttpInjector:
    def __init__(self, name: str, protocol_version: str = "HTTP/1.1") -> None:
        injector = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                injector.handle(self)

            def do_POST(self) -> None:
                injector.handle(self)

        Handler.protocol_version = protocol_version
        self._name = name
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]

    def handle(self, req: http.server.BaseHTTPRequestHandler) -> None:
        raise NotImplementedError

    def start(self) -> None:
        threading.Thread(target=self._server.serve_forever, name=self._name, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    @staticmethod
    def answer(req: http.server.BaseHTTPRequestHandler, status: int, headers: dict[str, str], payload: bytes) -> None:
        req.send_response(status)
        for k, v in headers.items():
            req.send_header(k, v)
        req.send_header("Content-Length", str(len(payload)))
        req.end_headers()
        req.wfile.write(payload)
