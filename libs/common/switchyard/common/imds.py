"""Spot interruption notices from the cloud's instance metadata service (AWS IMDS format, IMDSv2).

``GET {base}/latest/meta-data/spot/instance-action`` answers 404 until the instance is scheduled
for interruption, then 200 with ``{"action": "terminate"|"stop"|"hibernate", "time": "...Z"}``
(about two minutes ahead). Every read carries a session token (``PUT {base}/latest/api/token``),
fetched again when it expires or is refused (401). The poller never ends the worker on its own
errors: an unreachable metadata service is logged and polled again.
"""

from __future__ import annotations

import asyncio
import logging
import time

import httpx
from pydantic import BaseModel, ValidationError

log = logging.getLogger("switchyard.imds")

TOKEN_PATH = "/latest/api/token"
INSTANCE_ACTION_PATH = "/latest/meta-data/spot/instance-action"
TOKEN_TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"
TOKEN_TTL_S = 21600  # the longest IMDS grants (6 h)


class InterruptionNotice(BaseModel):
    action: str
    time: str


class ImdsPoller:
    """Polls ``base_url`` every ``every_s`` seconds; ``wait()`` returns the first notice."""

    def __init__(self, base_url: str, every_s: float, http: httpx.AsyncClient) -> None:
        self.base_url = base_url.rstrip("/")
        self.every_s = every_s
        self.http = http
        self._token: str | None = None
        self._token_expires = 0.0

    async def _session_token(self) -> str:
        if self._token is None or time.monotonic() >= self._token_expires:
            r = await self.http.put(self.base_url + TOKEN_PATH, headers={TOKEN_TTL_HEADER: str(TOKEN_TTL_S)})
            r.raise_for_status()
            # Renewed a minute early: a token must not expire between fetch and use.
            self._token, self._token_expires = r.text.strip(), time.monotonic() + TOKEN_TTL_S - 60
        return self._token

    async def check(self) -> InterruptionNotice | None:
        """One read: the notice, or None (404: nothing scheduled). Raises on transport/server errors."""
        for _ in range(2):  # a refused (expired, revoked) token is fetched again once
            r = await self.http.get(self.base_url + INSTANCE_ACTION_PATH, headers={TOKEN_HEADER: await self._session_token()})
            if r.status_code == 401:
                self._token = None
                continue
            if r.status_code == 404:
                return None
            r.raise_for_status()
            return InterruptionNotice.model_validate_json(r.content)
        raise httpx.HTTPStatusError("metadata token refused twice", request=r.request, response=r)

    async def wait(self) -> InterruptionNotice:
        failing = False
        while True:
            try:
                notice = await self.check()
            except (httpx.HTTPError, ValidationError) as e:
                if not failing:  # once per outage, not once per poll
                    log.warning("instance metadata unreadable; polling on", extra={"fields": {"url": self.base_url, "error": repr(e)}})
                failing = True
            else:
                failing = False
                if notice is not None:
                    return notice
            await asyncio.sleep(self.every_s)
