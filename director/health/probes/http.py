"""HTTP(S) check: the server is up when it answers with an expected status
(and, when asked, a body matching a regex).

Every probe has a client and a connection of its own, closed after the answer:
many checks hold no idle sockets, and thousands of probes in flight do not
queue in one shared connection pool (whose bookkeeping grows with the number
of requests in it). What is costly to build, the TLS contexts, is shared
through `TlsContexts`.
"""

from __future__ import annotations

import contextlib
import re
import ssl
from collections.abc import AsyncGenerator
from typing import cast

import httpx

from director.health.probes.attempt import probe_attempt
from director.health.result import ProbeResult, Reason
from director.health.spec import HttpCheck
from director.ipvs.model import IPAddress

MAX_BODY = 1 << 20  # bytes of body searched for expect_body
USER_AGENT = "director-health-check"
_NO_KEEPALIVE = httpx.Limits(max_connections=None, max_keepalive_connections=0)


class TlsContexts:
    """One TLS context per verification mode, built on first use (loading the
    CA certificates takes tens of milliseconds)."""

    def __init__(self) -> None:
        self._contexts: dict[bool, ssl.SSLContext] = {}

    def get(self, verify: bool) -> ssl.SSLContext:
        context = self._contexts.get(verify)
        if context is None:
            context = self._contexts[verify] = httpx.create_ssl_context(
                verify=verify, trust_env=False
            )
        return context


async def probe_http(
    check: HttpCheck, address: IPAddress, port: int, tls: TlsContexts | None = None
) -> ProbeResult:
    address = check.address or address
    port = check.port if check.port is not None else port
    headers = {"Host": check.host} if check.host else {}
    extensions = {"sni_hostname": check.host} if check.tls and check.host else {}
    # A plain-HTTP probe never uses its context: give it the cheap one.
    context = (tls or TlsContexts()).get(check.verify_tls and check.tls)
    with probe_attempt(check.timing.timeout) as attempt:
        async with (
            _new_client(context) as client,
            client.stream(
                check.method, url_for(check, address, port), headers=headers, extensions=extensions
            ) as response,
        ):
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


def _new_client(context: ssl.SSLContext) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        verify=context,
        trust_env=False,  # no proxies, no netrc: probe the server itself
        timeout=None,  # the probe's own deadline bounds it
        follow_redirects=False,
        limits=_NO_KEEPALIVE,
        headers={"Connection": "close", "User-Agent": USER_AGENT},
    )


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
