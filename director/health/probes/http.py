"""HTTP(S) check: the server is up when it answers with an expected status
(and, when asked, a body matching a regex).

Connections are never kept alive: one probe, one connection, closed after the
answer, so that many checks hold no idle sockets. The HTTP clients (and their
TLS contexts, which are costly to build) are shared through `HttpClients`.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncGenerator
from typing import cast

import httpx

from director.health.probes.attempt import probe_attempt
from director.health.result import ProbeResult, Reason
from director.health.spec import HttpCheck
from director.ipvs.model import IPAddress

MAX_BODY = 1 << 20  # bytes of body searched for expect_body
USER_AGENT = "director-health-check"


class HttpClients:
    """One client per TLS verification mode, made on first use."""

    def __init__(self) -> None:
        self._clients: dict[bool, httpx.AsyncClient] = {}

    def for_check(self, check: HttpCheck) -> httpx.AsyncClient:
        client = self._clients.get(check.verify_tls)
        if client is None:
            client = self._clients[check.verify_tls] = _new_client(check.verify_tls)
        return client

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()


def _new_client(verify_tls: bool) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        verify=verify_tls,
        trust_env=False,  # no proxies, no netrc: probe the server itself
        timeout=None,  # the probe's own deadline bounds it
        follow_redirects=False,
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=0),
        headers={"Connection": "close", "User-Agent": USER_AGENT},
    )


async def probe_http(
    check: HttpCheck, address: IPAddress, port: int, clients: HttpClients | None = None
) -> ProbeResult:
    if clients is None:
        clients = HttpClients()
        try:
            return await probe_http(check, address, port, clients)
        finally:
            await clients.aclose()
    address = check.address or address
    port = check.port if check.port is not None else port
    headers = {"Host": check.host} if check.host else {}
    extensions = {"sni_hostname": check.host} if check.tls and check.host else {}
    client = clients.for_check(check)
    with probe_attempt(check.timing.timeout) as attempt:
        async with client.stream(
            check.method, url_for(check, address, port), headers=headers, extensions=extensions
        ) as response:
            status = response.status_code
            if not any(status in expected for expected in check.expect_status):
                attempt.fail(Reason.BAD_STATUS, f"status {status}")
            elif check.expect_body is None:
                attempt.succeed(detail=f"status {status}")
            else:
                body = await _read_body(response, MAX_BODY)
                text = body.decode(response.encoding or "utf-8", "replace")
                if re.search(check.expect_body, text):
                    attempt.succeed(detail=f"status {status}")
                else:
                    detail = f"status {status}, body does not match {check.expect_body!r}"
                    attempt.fail(Reason.BAD_BODY, detail)
    return attempt.result


def url_for(check: HttpCheck, address: IPAddress, port: int) -> str:
    scheme = "https" if check.tls else "http"
    host = f"[{address}]" if address.version == 6 else str(address)
    return f"{scheme}://{host}:{port}{check.path}"


async def _read_body(response: httpx.Response, limit: int) -> bytes:
    body = bytearray()
    # Stopping early must close the generator here, not leave it to the collector.
    chunks_gen = cast(AsyncGenerator[bytes, None], response.aiter_bytes())
    async with contextlib.aclosing(chunks_gen) as chunks:
        async for chunk in chunks:
            body += chunk
            if len(body) >= limit:
                break
    return bytes(body[:limit])
