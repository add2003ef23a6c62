"""HTTP(S) check: the server is up when it answers with an expected status
(and, when asked, a body matching a regex).

Every probe has a client and a connection of its own, closed after the answer:
many checks hold no idle sockets, and thousands of probes in flight do not
queue in one shared connection pool (whose bookkeeping grows with the number
of requests in it). What is costly to build, the TLS contexts, is shared
through `TlsContexts`.

What a server sends is bounded before anything decodes it. The probe asks for
`Accept-Encoding: identity` and never decompresses: the body is read raw
(a lying `Content-Encoding` or a decompression bomb is just bytes), at most
MAX_BODY of it, and only when `expect_body` needs it. The header section is
buffered by h11, which refuses one that stays incomplete past httpcore's
MAX_INCOMPLETE_EVENT_SIZE (100 KiB, plus at most one 64 KiB read); a header
section above MAX_HEADER is then a bad reply. Whatever trickles is cut by the
probe's timeout.
"""

from __future__ import annotations

import re
import ssl

import httpx
import trio

from director.health.probes.attempt import probe_attempt
from director.health.probes.tls import TlsContexts, TlsSettings, TlsSetupError
from director.health.result import ProbeResult, Reason
from director.health.spec import HttpCheck, host_problem
from director.ipvs.model import IPAddress, endpoint

MAX_BODY = 1 << 20  # bytes of raw body searched for expect_body
# Bytes of header fields (names, values, ": " and CRLF): HAProxy relays no more
# than its tune.bufsize (16 KiB) and nginx than proxy_buffer_size (4 or 8 KiB).
MAX_HEADER = 32 << 10
USER_AGENT = "director-health-check"
_NO_KEEPALIVE = httpx.Limits(max_connections=None, max_keepalive_connections=0)
_CLIENT_HEADERS = {
    "Connection": "close",
    "User-Agent": USER_AGENT,
    "Accept-Encoding": "identity",  # a health check never needs compression
}

__all__ = ["MAX_BODY", "MAX_HEADER", "TlsContexts", "probe_http", "read_raw_body", "url_for"]


async def probe_http(
    check: HttpCheck, address: IPAddress, port: int, tls: TlsContexts | None = None
) -> ProbeResult:
    address = check.address or address
    port = check.port if check.port is not None else port
    headers: dict[str, str] = {}
    extensions: dict[str, str] = {}
    if check.host is not None:
        problem = host_problem(check.host)
        if problem is not None:
            return ProbeResult.failure(Reason.ERROR, 0.0, f"host {check.host!r}: {problem}")
        headers["Host"] = f"[{check.host}]" if ":" in check.host else check.host
        if check.tls:
            # Python's ssl sends no SNI for an IP literal; it then checks the
            # certificate's IP addresses instead of its names.
            extensions["sni_hostname"] = check.host.removesuffix(".")
    with probe_attempt(check.timing.timeout) as attempt:
        try:
            context = (tls or TlsContexts()).get(TlsSettings.of(check))
        except TlsSetupError as e:
            attempt.fail(Reason.ERROR, f"tls: {e}")
            return attempt.result
        async with (
            _new_client(context) as client,
            client.stream(
                check.method, url_for(check, address, port), headers=headers, extensions=extensions
            ) as response,
        ):
            status = response.status_code
            header_size = sum(len(name) + len(value) + 4 for name, value in response.headers.raw)
            if header_size > MAX_HEADER:
                detail = (
                    f"status {status}, {header_size} bytes of header fields (limit {MAX_HEADER})"
                )
                attempt.fail(Reason.BAD_REPLY, detail)
            elif not any(status in expected for expected in check.expect_status):
                attempt.fail(Reason.BAD_STATUS, f"status {status}")
            elif check.expect_body is None:
                attempt.succeed(detail=f"status {status}")
            else:
                body = await read_raw_body(response, MAX_BODY)
                if re.search(check.expect_body, decode_body(body, response.charset_encoding)):
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
        headers=_CLIENT_HEADERS,
    )


def url_for(check: HttpCheck, address: IPAddress, port: int) -> str:
    scheme = "https" if check.tls else "http"
    return f"{scheme}://{endpoint(address, port)}{check.path}"


async def read_raw_body(response: httpx.Response, limit: int) -> bytes:
    """At most `limit` bytes of the body as sent (no content decoding); the
    rest is never read (the connection is closed after the probe)."""
    body = bytearray()
    # Stop by cancelling the read in progress rather than by leaving the loop:
    # the cancellation runs through httpx's and httpcore's nested generators
    # and finishes them, where a break would leave them to the collector.
    with trio.CancelScope() as reading:
        async for chunk in response.aiter_raw():
            body += chunk[: limit - len(body)]
            if len(body) >= limit:
                reading.cancel()
    return bytes(body)


def decode_body(body: bytes, charset: str | None) -> str:
    """The body as text in its charset, or UTF-8 when the charset is absent or
    not a text codec ("rot13", "idna" refuses 'replace'); undecodable bytes
    become U+FFFD."""
    if charset is not None:
        try:
            return body.decode(charset, "replace")
        except (LookupError, ValueError, TypeError):
            pass
    return body.decode("utf-8", "replace")
