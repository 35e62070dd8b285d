"""STAND-IN for a cloud instance metadata service (AWS IMDS format, IMDSv2 only), on loopback.
NOT the cloud's endpoint: the tests' way to deliver a spot interruption notice to a worker
(``SWITCHYARD_SPOT_METADATA_URL``, switchyard.common.imds).

What it speaks: ``PUT /latest/api/token`` with ``X-aws-ec2-metadata-token-ttl-seconds`` (1-21600)
gives a session token (400 without a valid TTL); ``GET /latest/meta-data/spot/instance-action``
needs ``X-aws-ec2-metadata-token`` (401 without a valid one) and answers 404 until ``interrupt()``,
then 200 ``{"action": ..., "time": ...}``. ``revoke_tokens()`` makes every token given so far invalid.
"""

from __future__ import annotations

import json
import secrets
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class ImdsStandIn:
    def __init__(self) -> None:
        self.tokens: set[str] = set()
        self.notice: dict[str, str] | None = None
        self.token_requests = 0
        self.action_reads = 0
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def _reply(self, status: int, body: str = "", content_type: str = "text/plain") -> None:
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_PUT(self) -> None:
                if self.path != "/latest/api/token":
                    return self._reply(404)
                ttl = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds", "")
                if not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
                    return self._reply(400)
                token = secrets.token_urlsafe(32)
                standin.tokens.add(token)
                standin.token_requests += 1
                self._reply(200, token)

            def do_GET(self) -> None:
                if self.headers.get("X-aws-ec2-metadata-token") not in standin.tokens:
                    return self._reply(401)
                if self.path != "/latest/meta-data/spot/instance-action":
                    return self._reply(404)
                standin.action_reads += 1
                if standin.notice is None:
                    return self._reply(404)
                self._reply(200, json.dumps(standin.notice), "application/json")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> ImdsStandIn:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def interrupt(self, action: str = "terminate", in_s: float = 120.0) -> None:
        """Schedule the interruption: from now on instance-action answers the notice."""
        when = datetime.now(UTC) + timedelta(seconds=in_s)
        self.notice = {"action": action, "time": when.strftime("%Y-%m-%dT%H:%M:%SZ")}

    def revoke_tokens(self) -> None:
        self.tokens.clear()
