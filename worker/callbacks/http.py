"""One HTTP attempt of a status callback: a total deadline, a bounded answer, and only allowed addresses.

- **Deadline.** ``timeout=(connect, read)`` in requests bounds each socket operation, not the request: a receiver
  that trickles its answer a byte at a time holds the thread for as long as it likes. Here the whole attempt
  (connect, TLS handshake, sending, the status line, headers and the part of the answer we read) has one
  monotonic deadline (``CALLBACK_TIMEOUT``). Connecting is bounded by the time left; once connected, a watchdog
  timer shuts the connection down (through a duplicate of its socket that this module owns, so it can never touch
  a reused descriptor) when the deadline passes, which ends any blocked read or write at once. Name resolution
  (``getaddrinfo``) is bounded only by the system resolver's own timeout.
- **Bounded answer.** The answer is streamed (``Accept-Encoding: identity``, read undecoded) and at most
  :data:`MAX_ANSWER_BYTES` of it is read; a short excerpt without control characters is kept for the record.
- **Addresses.** A callback URL may reach public addresses only (``ipaddress``'s ``is_global``, and not
  multicast), plus the ranges in ``CALLBACK_ALLOWED_NETWORKS``: checked on every address the host resolves to
  when an endpoint is added (:func:`check_host`) and again on every attempt, where the connection is made to one
  of the addresses just checked and its peer address is checked once more before anything is sent (so a DNS
  answer that changes between the check and the connection cannot point a request inside the network).
  Requests go direct: ``HTTP(S)_PROXY`` and ``.netrc`` are not used, since a proxy would be the address checked.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
import unicodedata
from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, HTTPError, NameResolutionError, NewConnectionError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

#: The most of an answer that is read (the rest is never received: the connection is closed).
MAX_ANSWER_BYTES = 64 * 1024
#: Characters of a non-2xx answer kept in the attempt's error.
EXCERPT_CHARS = 200
#: Connecting to one address takes at most this long (and never longer than the time left).
CONNECT_TIMEOUT = 5.0
_READ_SIZE = 8192
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class Failure(Exception):
    """The attempt got no usable answer: ``message`` for the record, ``retryable`` or a permanent failure."""

    def __init__(self, message: str, retryable: bool) -> None:
        super().__init__(message)
        self.message, self.retryable = message, retryable


class AddressRefused(Exception):
    """The URL's host resolves to (or the connection reached) an address that is not allowed.

    Not an ``OSError``: urllib3 and requests must let it through as it is, not retry another address."""

    def __init__(self, address: str) -> None:
        super().__init__(f"callback URL resolves to {address}, which is not a public address; allow it with "
                         "CALLBACK_ALLOWED_NETWORKS")
        self.address = address


class _DeadlineExceeded(Exception):
    """No time left to connect."""


@dataclass(frozen=True)
class Answer:
    status: int
    excerpt: str  # up to EXCERPT_CHARS of the answer, control characters removed


# ------------------------------------------------------------------------------------------ addresses


def _embedded_ipv4(ip: Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries and reaches (IPv4-mapped, 6to4, the NAT64 prefix), if any."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def is_allowed(address: str, allowed: Sequence[Network] = ()) -> bool:
    """Whether a callback may connect to ``address``: it is in an allowed network, or it is public (global
    and not multicast; for an IPv6 address that carries an IPv4 one, that IPv4 address decides)."""
    try:
        ip = ipaddress.ip_address(address.partition("%")[0])  # an IPv6 scope id ("fe80::1%eth0") is not part of it
    except ValueError:
        return False
    if any(ip.version == net.version and ip in net for net in allowed):
        return True
    inner = _embedded_ipv4(ip)
    if inner is not None:
        return is_allowed(str(inner), allowed)
    return ip.is_global and not ip.is_multicast


def _resolve(host: str, port: int) -> list[tuple[Any, ...]]:
    return socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)


def check_host(host: str, port: int, allowed: Sequence[Network] = ()) -> None:
    """Resolve ``host``; raise :class:`AddressRefused` unless every address is allowed, ``ValueError`` when it
    does not resolve."""
    try:
        infos = _resolve(host, port)
    except (OSError, UnicodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise ValueError(f"callback URL host {host!r} does not resolve: {reason}") from None
    for info in infos:
        if not is_allowed(info[4][0], allowed):
            raise AddressRefused(info[4][0])


# ------------------------------------------------------------------------------------------ the deadline


class _Attempt:
    """The deadline of one attempt and the connections it must be able to cut when the deadline passes."""

    def __init__(self, seconds: float, allowed: Sequence[Network]) -> None:
        self.seconds = seconds
        self.allowed = tuple(allowed)
        self.deadline = time.monotonic() + seconds
        self.expired = False
        self._over = False
        self._lock = threading.Lock()
        self._watched: list[socket.socket] = []
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def watch(self, sock: socket.socket) -> None:
        """Keep a duplicate of a connected socket: shutting it down ends the connection for every holder."""
        with self._lock:
            if self._over:
                return
            dup = sock.dup()
            self._watched.append(dup)
            if self.expired:
                _shutdown(dup)

    def _expire(self) -> None:
        with self._lock:
            if self._over:
                return
            self.expired = True
            for sock in self._watched:
                _shutdown(sock)

    def finish(self) -> bool:
        """Stop the watchdog and release the duplicates; returns whether the deadline passed first."""
        self._timer.cancel()
        with self._lock:
            self._over = True
            for sock in self._watched:
                sock.close()
            self._watched.clear()
            return self.expired or self.remaining() <= 0


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # already closed or never connected: nothing left to cut
        pass


_current: ContextVar[_Attempt | None] = ContextVar("callback_attempt", default=None)


class _CheckedConnect:
    """``_new_conn`` of urllib3's connections: resolve, refuse unless every address is allowed, connect within
    the time left to one of the checked addresses, check the peer address, and hand the socket to the watchdog."""

    host: str
    port: int
    socket_options: Any
    _dns_host: str

    def _new_conn(self) -> socket.socket:
        attempt = _current.get()
        if attempt is None:
            raise RuntimeError("a callback connection outside an attempt")
        try:
            infos = _resolve(self._dns_host, self.port)
        except socket.gaierror as err:
            raise NameResolutionError(self.host, self, err) from err  # type: ignore[arg-type]
        for info in infos:
            if not is_allowed(info[4][0], attempt.allowed):
                raise AddressRefused(info[4][0])
        last: OSError | None = None
        for family, kind, proto, _, address in infos:
            remaining = attempt.remaining()
            if remaining <= 0:
                raise _DeadlineExceeded
            sock = socket.socket(family, kind, proto)
            try:
                for option in self.socket_options or ():
                    sock.setsockopt(*option)
                sock.settimeout(min(CONNECT_TIMEOUT, remaining))
                sock.connect(address)
                peer = sock.getpeername()[0]
                if not is_allowed(peer, attempt.allowed):
                    raise AddressRefused(peer)
            except OSError as err:
                sock.close()
                last = err
                continue
            except BaseException:
                sock.close()
                raise
            attempt.watch(sock)
            return sock
        if isinstance(last, TimeoutError):
            raise ConnectTimeoutError(self, f"connecting to {self.host} timed out")
        raise NewConnectionError(self, f"Failed to establish a new connection: {last}")  # type: ignore[arg-type]


class _HTTPConnection(_CheckedConnect, HTTPConnection):
    pass


class _HTTPSConnection(_CheckedConnect, HTTPSConnection):
    pass


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


class _Adapter(HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}


# ------------------------------------------------------------------------------------------ one POST


def excerpt(data: bytes, limit: int = EXCERPT_CHARS) -> str:
    """The start of an answer as one line: UTF-8 (bad bytes replaced), control and format characters removed,
    whitespace runs as one space, at most ``limit`` characters."""
    text = data[: limit * 4].decode("utf-8", "replace")
    kept = "".join(" " if c.isspace() else c for c in text if c.isspace() or unicodedata.category(c)[0] != "C")
    return " ".join(kept.split())[:limit]


def post(url: str, body: bytes, headers: dict[str, str], *, seconds: float,
         allowed: Sequence[Network] = ()) -> Answer:
    """POST ``body`` to ``url`` within ``seconds`` in all; the status and an excerpt of at most
    :data:`MAX_ANSWER_BYTES` read of the answer. Raises :class:`Failure` when no answer came in time (retryable),
    on a network error (retryable) or when the address is not allowed (permanent)."""
    attempt = _Attempt(seconds, allowed)
    token = _current.set(attempt)
    session = requests.Session()
    session.trust_env = False  # no proxy (it would be the address checked) and no .netrc
    adapter = _Adapter(max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    response: requests.Response | None = None
    status: int | None = None
    try:
        try:
            response = session.post(url, data=body, headers={**headers, "accept-encoding": "identity"},
                                    allow_redirects=False, stream=True,
                                    timeout=(min(CONNECT_TIMEOUT, seconds), max(attempt.remaining(), 0.01)))
            status = response.status_code
            head = _read_head(response.raw, attempt)
        except AddressRefused as err:
            raise Failure(str(err), retryable=False) from None
        except (_DeadlineExceeded, requests.RequestException, HTTPError, OSError, ValueError) as err:
            if attempt.finish():
                answered = f" (HTTP {status} answered, the rest of the answer never came)" if status else ""
                raise Failure(f"timed out after {seconds:g} s{answered}", retryable=True) from None
            raise Failure(f"{type(err).__name__}: network error", retryable=True) from None
        if attempt.finish():  # the watchdog cut the answer short
            raise Failure(f"timed out after {seconds:g} s (HTTP {status} answered, the rest of the answer "
                          "never came)", retryable=True)
        return Answer(status, excerpt(head))
    finally:
        if response is not None:
            response.close()
        session.close()
        attempt.finish()
        _current.reset(token)


def _read_head(raw: Any, attempt: _Attempt) -> bytes:
    """Up to :data:`MAX_ANSWER_BYTES` of the answer, undecoded, stopping at the deadline."""
    chunks: list[bytes] = []
    total = 0
    while total < MAX_ANSWER_BYTES:
        if attempt.remaining() <= 0:
            raise _DeadlineExceeded
        chunk = raw.read(min(_READ_SIZE, MAX_ANSWER_BYTES - total), decode_content=False)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)
