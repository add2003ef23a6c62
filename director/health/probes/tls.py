"""TLS contexts for HTTPS checks, built from the check's trust settings.

Trust is the system's store (OpenSSL's default verify paths: on Debian
/etc/ssl/certs, kept by ca-certificates; SSL_CERT_FILE and SSL_CERT_DIR
override it, as for any OpenSSL program), or `ca_file` alone when given. A
client certificate (`cert_file`, with `key_file` or the key in the same file)
is offered for mutual TLS. `TlsContexts` builds each distinct set of settings
once and shares it between probes: loading the system store takes tens of
milliseconds (34 ms on the host, 6x that in the VM), so probes have it built in
a worker thread (`prepare`), outside their time and without holding the event
loop. It also keeps the last TLS session of each server, for the next
handshake to resume. The config builds a context at load time too
(`tls_context`) so that `--check` reports a file that cannot be loaded.
"""

from __future__ import annotations

import errno
import os
import ssl
import stat
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import trio

from director.health.spec import HttpCheck
from director.ipvs.model import IPAddress
from director.oserror import strerror

T = TypeVar("T")


class TlsSetupError(Exception):
    """A file of the TLS settings cannot be loaded: `key` names the setting
    (ca_file, cert_file, cert_file/key_file), `reason` says why."""

    def __init__(self, key: str, path: str, reason: str) -> None:
        super().__init__(f"{key} {path}: {reason}")
        self.key, self.path, self.reason = key, path, reason


@dataclass(frozen=True)
class TlsSettings:
    """The trust settings of an HTTPS check (HttpCheck's verify_tls, ca_file,
    cert_file, key_file): what a client context is built from, and the key
    TlsContexts shares it by. A plain-HTTP check has PLAIN."""

    verify: bool = True
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    @classmethod
    def of(cls, check: HttpCheck) -> TlsSettings:
        if not check.tls:
            return PLAIN  # a plain-HTTP probe never uses its context
        return cls(check.verify_tls, check.ca_file, check.cert_file, check.key_file)


PLAIN = TlsSettings(verify=False)
MAX_SESSIONS = 16384  # TLS sessions kept, the oldest dropped first (one per server)


def tls_context(settings: TlsSettings) -> ssl.SSLContext:
    """A client context for `settings`; raises TlsSetupError."""
    if not settings.verify:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif settings.ca_file is None:
        context = ssl.create_default_context()
    else:
        ca_file = _regular_file("ca_file", settings.ca_file)
        context = _load("ca_file", ca_file, lambda: ssl.create_default_context(cafile=ca_file))
    if settings.cert_file is not None:
        cert_file = _regular_file("cert_file", settings.cert_file)
        key_file = settings.key_file and _regular_file("key_file", settings.key_file)
        _load(
            "cert_file",
            cert_file,
            lambda: context.load_cert_chain(cert_file, key_file, _no_password),
            " (no private key in it? then set key_file)" if key_file is None else "",
            # An encrypted key is the key file's fault, where there is one.
            encrypted=("key_file", key_file) if key_file is not None else None,
        )
    return context


class TlsContexts:
    """The TLS state probes share: one context per distinct TlsSettings,
    built on first use (a failed build is not kept: the next probe tries
    again, the file may be fixed), and the last session of each (context,
    address, port, server name), at most MAX_SESSIONS of them."""

    def __init__(self) -> None:
        self._contexts: dict[TlsSettings, ssl.SSLContext] = {}
        self._building = trio.Lock()
        self._sessions: dict[_SessionKey, ssl.SSLSession] = {}

    def get(self, settings: TlsSettings) -> ssl.SSLContext:
        """The shared context for `settings`, built here when it is not yet;
        raises TlsSetupError."""
        context = self._contexts.get(settings)
        if context is None:
            context = self._contexts[settings] = tls_context(settings)
        return context

    async def prepare(self, settings: TlsSettings) -> ssl.SSLContext:
        """The shared context for `settings`, built in a worker thread when it
        is not yet (OpenSSL loads a trust store without the GIL), once however
        many probes wait for it; raises TlsSetupError."""
        context = self._contexts.get(settings)
        if context is not None:
            return context
        async with self._building:
            context = self._contexts.get(settings)
            if context is None:
                context = await trio.to_thread.run_sync(tls_context, settings)
                self._contexts[settings] = context
            return context

    def session(
        self, context: ssl.SSLContext, address: IPAddress, port: int, server_name: str
    ) -> ssl.SSLSession | None:
        """The last session kept for this server and context, or None."""
        return self._sessions.get((context, address, port, server_name))

    def keep_session(
        self,
        context: ssl.SSLContext,
        address: IPAddress,
        port: int,
        server_name: str,
        session: ssl.SSLSession,
    ) -> None:
        key = (context, address, port, server_name)
        self._sessions.pop(key, None)
        self._sessions[key] = session
        if len(self._sessions) > MAX_SESSIONS:
            del self._sessions[next(iter(self._sessions))]


if TYPE_CHECKING:  # not at import: ssl may be a stand-in until used (daemon.py)
    _SessionKey = tuple[ssl.SSLContext, IPAddress, int, str]


def _load(
    key: str,
    path: str,
    load: Callable[[], T],
    pem_lib_hint: str = "",
    encrypted: tuple[str, str] | None = None,
) -> T:
    """`load()`; its failure as a TlsSetupError naming `key` and `path`, or
    for an encrypted private key `encrypted` (key, path) when given."""
    try:
        return load()
    except ssl.SSLError as e:
        # OpenSSL says only "PEM lib" for a certificate file without its key.
        hint = pem_lib_hint if "PEM lib" in str(e) else ""
        raise TlsSetupError(key, path, f"{_ssl_message(e)}{hint}") from e
    except OSError as e:
        raise TlsSetupError(key, path, _os_message(e)) from e
    except ValueError as e:  # from _no_password
        raise TlsSetupError(*(encrypted or (key, path)), str(e)) from e


def _regular_file(key: str, path: str) -> str:
    """`path` when it is a regular file we may read. Anything else (a FIFO
    would block the event loop in OpenSSL's read) raises TlsSetupError."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            regular = stat.S_ISREG(os.fstat(fd).st_mode)
        finally:
            os.close(fd)
    except OSError as e:
        raise TlsSetupError(key, path, _os_message(e)) from e
    except ValueError as e:  # a NUL in the path
        raise TlsSetupError(key, path, str(e)) from e
    if not regular:
        raise TlsSetupError(key, path, "not a regular file")
    return path


def _os_message(e: OSError) -> str:
    name = errno.errorcode.get(e.errno or 0, "error")
    return f"{name}: {strerror(e)}"


def _ssl_message(e: ssl.SSLError) -> str:
    text = str(e.strerror or e)
    # "[X509: NO_CERTIFICATE_OR_CRL_FOUND] no certificate or crl found (_ssl.c:4123)"
    return text.split(" (_ssl.c:", 1)[0]


def _no_password() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal and block.
    raise ValueError("the private key is encrypted; give an unencrypted key")
