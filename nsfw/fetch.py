"""URL -> image bytes in a spooled temporary file, with every limit. No Flask.

What it guarantees, hop by hop (at most `max_redirects` redirects, each checked like the first URL):
- only http/https, no credentials, an allowed port, a URL both parsers read the same way;
- the host is resolved once per connection, every address it resolves to is checked, and the
  connection goes to exactly the address that was checked (no second lookup to rebind);
- refused: loopback, private, link-local, multicast, reserved, shared and unspecified addresses and
  every IPv4-in-IPv6 form, unless inside an operator's NSFW_ALLOWED_NETWORKS;
- no proxies or .netrc from the environment; `Accept-Encoding: identity`; bytes counted after any
  decoding; a redirect's body is never read;
- one wall-clock deadline for the whole download: each read waits at most what is left of it, and a
  watchdog shuts the fetch's sockets when it passes (a status line or headers sent one byte at a time
  are otherwise bounded by no socket timeout);
- no connection outlives its fetch, so a hostile server cannot hold one open between requests.
"""

from __future__ import annotations

import heapq
import ipaddress
import itertools
import logging
import re
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO
from urllib.parse import urljoin, urlsplit, urlunsplit

import certifi
import idna
import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from nsfw.errors import (
    DownloadBudgetExceeded,
    ImageTooLarge,
    InvalidImage,
    InvalidUrl,
    Overloaded,
    TooManyRedirects,
    UpstreamError,
    UpstreamTimeout,
    UrlNotAllowed,
    UrlPortNotAllowed,
    UrlSchemeNotAllowed,
)
from nsfw.slots import FairSlots, off_model

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Sequence[str]]

DEFAULT_PORTS = {"http": 80, "https": 443}
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
CHUNK_BYTES = 64 * 1024
# Bodies up to this size stay in memory; bigger ones roll over to an unlinked temporary file: a
# download, a request's body (nsfw/web/frontend.py), a decoded base64 image (nsfw/web/api.py).
SPOOL_MEMORY_BYTES = 1024 * 1024
USER_AGENT = "nsfw-api/1.0 (+image moderation; fetches only the URL it was given)"
# identity: the body is not compressed in transit, so what we count is what we decode (a server that
# compresses anyway is decoded and counted after decoding).
REQUEST_HEADERS = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity", "Accept": "image/*"}

# Ranges refused on top of what `ipaddress` calls non-global. Every IPv4-in-IPv6 form is refused
# outright rather than unwrapped: a client can always send the plain IPv4 address instead.
_EXTRA_REFUSED: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(cidr)
    for cidr in (
        "0.0.0.0/8",  # "this network"
        "100.64.0.0/10",  # shared address space (CGNAT)
        "192.0.0.0/24",  # IETF protocol assignments
        "192.88.99.0/24",  # 6to4 relay anycast
        "198.18.0.0/15",  # benchmarking
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, broadcast
        "::/96",  # IPv4-compatible (::a.b.c.d), deprecated but still routed by some stacks
        "::ffff:0:0/96",  # IPv4-mapped
        "::ffff:0:0:0/96",  # IPv4-translated (SIIT)
        "64:ff9b::/96",  # NAT64
        "64:ff9b:1::/48",  # local-use NAT64
        "100::/64",  # discard-only
        "2001::/23",  # IETF protocol assignments (Teredo, ORCHIDv2, ...): not where images live,
        # and the exceptions `ipaddress` grants inside it differ between Python releases
        "2001:db8::/32",  # documentation
        "2002::/16",  # 6to4
        "3fff::/20",  # documentation
        "5f00::/16",  # segment routing
        "fc00::/7",  # unique local
        "fe80::/10",  # link-local
        "fec0::/10",  # site-local (deprecated)
        "ff00::/8",  # multicast
    )
)


# Bytes that say whether a body is a video (nsfw/imaging/video.py: sniff).
_HEAD = 16


@dataclass(frozen=True)
class FetchPolicy:
    """The limits of one fetch; built from Settings by the service."""

    connect_timeout: float
    read_timeout: float
    download_timeout: float
    max_bytes: int
    max_redirects: int
    max_url_length: int
    allowed_ports: tuple[int, ...]
    allowed_networks: tuple[IPNetwork, ...]
    # Host-name lookups in flight per process, and per caller (a hung lookup counts until it ends).
    max_lookups: int = 16
    max_lookups_per_caller: int = 4
    # A video may be up to max_video_bytes: a body whose first bytes are_video says are one (sniffed
    # as it arrives, never from its headers); every other body stays under max_bytes.
    max_video_bytes: int = 0
    is_video: Callable[[bytes], bool] = field(default=lambda head: False, repr=False)


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str  # ASCII: an internationalised name in its punycode form
    port: int
    url: str  # the URL with that host, as it is requested


def system_resolver(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for host, in its order."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


# WHATWG's rule, which the system resolver follows too: a host whose last label is a number is an
# IPv4 address in some spelling (2130706433, 0x7f000001, 0177.0.0.1, 127.1), never a DNS name.
_NUMERIC_LABEL = re.compile(r"(0x[0-9a-f]*|[0-9]+)")
# RFC 6761: these names are loopback wherever they are looked up; no DNS is asked.
_LOCALHOST = ipaddress.ip_address("127.0.0.1")


def ip_literal(host: str) -> IPAddress | None:
    """The address host spells, in any form the system resolver would take without DNS; None for a
    DNS name. A numeric host that no parser accepts (08.1.1.1) is an InvalidUrl, not a lookup."""
    name = host.strip("[]").lower()
    if ":" in name:
        try:
            return ipaddress.ip_address(name.split("%", 1)[0])  # a zone (fe80::1%eth0) changes nothing
        except ValueError:
            raise InvalidUrl(f"malformed IPv6 host {host!r}") from None
    name = name.removesuffix(".")
    if name == "localhost" or name.endswith(".localhost"):
        return _LOCALHOST
    if _NUMERIC_LABEL.fullmatch(name.rsplit(".", 1)[-1]):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(name))
        except OSError:
            raise InvalidUrl(f"malformed IPv4 host {host!r}") from None
    return None


def is_refused(ip: IPAddress, allowed: Sequence[IPNetwork] = ()) -> bool:
    """True unless ip is publicly routable, or inside a network the operator opened on purpose."""
    if any(ip.version == net.version and ip in net for net in allowed):
        return False
    if any(ip.version == net.version and ip in net for net in _EXTRA_REFUSED):
        return True
    return not ip.is_global or ip.is_multicast or ip.is_reserved or ip.is_link_local


def check_url(url: str, policy: FetchPolicy) -> Target:
    """Parse and vet a URL before any connection; raise an InvalidUrl or UrlNotAllowed subclass.
    The destination's address (a literal one too) is checked by _Guard, which every connection passes."""
    if not url:
        raise InvalidUrl("empty url")
    if len(url) > policy.max_url_length:
        raise InvalidUrl(f"url of {len(url)} characters")
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url):
        raise InvalidUrl("whitespace or control character in url")
    try:
        url = _ascii_host(url)
        split = urlsplit(url)
        parsed = urllib3.util.parse_url(url)
        split_port = split.port
    except (ValueError, urllib3.exceptions.LocationParseError) as exc:
        raise InvalidUrl(f"unparsable: {exc}") from None
    scheme = (split.scheme or "").lower()
    if scheme not in DEFAULT_PORTS:
        raise UrlSchemeNotAllowed(f"scheme {scheme!r}")
    if "@" in split.netloc or parsed.auth:
        raise InvalidUrl("credentials in url")
    host = (parsed.host or "").strip("[]").lower()
    if not host:
        raise InvalidUrl("no host")
    # urllib3 (which connects) and urllib.parse disagree on some crafted URLs, e.g.
    # http://127.0.0.1:80\@evil.com/ ; refuse whatever they do not read the same way.
    if host != (split.hostname or "") or parsed.port != split_port:
        raise InvalidUrl(f"parsers disagree: {parsed.host}:{parsed.port} vs {split.hostname}:{split_port}")
    port = parsed.port or DEFAULT_PORTS[scheme]
    if port not in policy.allowed_ports:
        raise UrlPortNotAllowed(f"port {port}")
    return Target(scheme, host, port, url)


def _ascii_host(url: str) -> str:
    """url with an internationalised host name in its ASCII form, by UTS #46 as browsers map it
    (http://bücher.example/ -> http://xn--bcher-kva.example/); other URLs unchanged.

    Both parsers then read the same host: urllib3 punycodes a non-ASCII host and urllib.parse does
    not, so every such URL used to fail the parsers' agreement check below.
    """
    split = urlsplit(url)
    host = split.hostname or ""
    if host.isascii():
        return url
    if "@" in split.netloc or "[" in split.netloc:
        raise ValueError("credentials or brackets around an internationalised host")
    try:
        ascii_host = idna.encode(host, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError) as exc:
        raise ValueError(f"host is not a valid internationalised name: {exc}") from None
    _, colon, port = split.netloc.rpartition(":")
    netloc = f"{ascii_host}:{port}" if colon and port.isascii() and port.isdigit() else ascii_host
    return urlunsplit(split._replace(netloc=netloc))


class _Guard:
    """Resolve once, check every address, hand back the one to connect to."""

    def __init__(self, policy: FetchPolicy, resolver: Resolver) -> None:
        self._policy = policy
        self._resolver = resolver
        # One thread per lookup slot, so an admitted lookup never queues behind hung ones.
        self._pool = ThreadPoolExecutor(max_workers=policy.max_lookups, thread_name_prefix="resolve")
        self._lookups = FairSlots(policy.max_lookups, policy.max_lookups_per_caller)

    def __call__(self, host: str, port: int, timeout: float) -> IPAddress:
        literal = ip_literal(host)
        if literal is not None:
            answers: Sequence[str] = [str(literal)]
        else:  # resolving is part of connecting, and bounded like it
            answers = self._resolve(host, port, min(timeout, self._policy.connect_timeout))
        # A name that does not resolve answers as one that resolves to a refused address (and about
        # as fast: both end when the resolver answers), so that nobody outside can tell which
        # internal names exist; the log says which it was.
        if not answers:
            raise UrlNotAllowed(f"{host} resolved to nothing")
        addresses = []
        for answer in answers:
            try:
                addresses.append(ipaddress.ip_address(answer.split("%", 1)[0]))
            except ValueError:
                raise UrlNotAllowed(f"{host} resolved to {answer!r}") from None
        for ip in addresses:
            if is_refused(ip, self._policy.allowed_networks):
                how = "is" if literal is not None else "resolves to"
                raise UrlNotAllowed(f"{host} {how} refused address {ip}")
        return addresses[0]

    def _resolve(self, host: str, port: int, timeout: float) -> Sequence[str]:
        # getaddrinfo has no timeout of its own; run it where we can stop waiting for it. A lookup
        # that hangs keeps its thread until the system resolver gives up (its own timeout), and its
        # caller's lookup slot as long: a caller whose names never answer runs out of its own share
        # (503), while the other callers' lookups still find threads.
        caller = getattr(_current, "caller", "-")
        if not self._lookups.try_acquire(caller):
            raise Overloaded(f"{self._lookups.per_caller} lookups of {caller} in flight")
        try:
            future = self._pool.submit(self._resolver, host, port)
        except BaseException:
            self._lookups.release(caller)
            raise
        future.add_done_callback(lambda _: self._lookups.release(caller))
        try:
            return future.result(timeout=max(timeout, 0.001))
        except FutureTimeout:
            # No answer says nothing about the name (refused and unknown ones alike get an answer).
            raise UpstreamTimeout(f"resolving {host}") from None
        except (OSError, UnicodeError, ValueError) as exc:
            raise UrlNotAllowed(f"resolving {host} failed: {exc}") from None


class _Deadline:
    """One fetch's wall-clock deadline. When it passes, every socket the fetch opened is shut down,
    which ends any read in progress, the status line and headers included."""

    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds
        self.expired = False
        self._finished = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def left(self) -> float:
        return self.at - time.monotonic()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            if self.expired:
                _shut(sock)

    def expire(self) -> None:
        with self._lock:
            if self._finished:
                return
            self.expired = True
            for sock in self._sockets:
                _shut(sock)

    def finish(self) -> None:
        with self._lock:
            self._finished = True
            self._sockets.clear()


def _shut(sock: socket.socket) -> None:
    # socket.socket's own shutdown, also for an SSLSocket: it acts on the descriptor and leaves the
    # TLS object alone for the thread that is still reading from it.
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass  # already closed


class _Watchdog:
    """One thread per worker that expires deadlines in time order (not a timer thread per fetch)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, _Deadline]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def add(self, deadline: _Deadline) -> None:
        with self._cond:
            earliest = not self._heap or deadline.at < self._heap[0][0]
            heapq.heappush(self._heap, (deadline.at, next(self._order), deadline))
            if self._thread is None:  # started lazily: after gunicorn forks, in the worker
                self._thread = threading.Thread(target=self._run, name="fetch-watchdog", daemon=True)
                self._thread.start()
            if earliest:  # wake the watchdog only when its next wake-up moves earlier (rarely:
                self._cond.notify()  # deadlines mostly arrive in order), not on every fetch

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                while self._heap and self._heap[0][0] <= now:
                    heapq.heappop(self._heap)[2].expire()  # a no-op for fetches that finished
                self._cond.wait(self._heap[0][0] - now if self._heap else None)


# The deadline of the fetch running on this thread, for the connections it opens.
_current = threading.local()


class _WatchedHTTPConnection(HTTPConnection):
    def connect(self) -> None:
        super().connect()
        _current.deadline.watch(self.sock)


class _WatchedHTTPSConnection(HTTPSConnection):
    def connect(self) -> None:
        # The TLS handshake itself is bounded per read by the connect timeout; from here on, the
        # deadline holds.
        super().connect()
        _current.deadline.watch(self.sock)


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


class RequestShare:
    """What one client request may take from image hosts over all its fetches (a batch's items, each
    hop of each): at most `per_host` connections to one host at once, `max_bytes` bytes in total.
    Shared by the request's threads; `fetched` is what it took."""

    def __init__(self, max_bytes: int, per_host: int) -> None:
        self.max_bytes = max_bytes
        self.fetched = 0
        self._per_host = per_host
        self._lock = threading.Lock()
        self._hosts: dict[str, threading.BoundedSemaphore] = {}

    def take(self, size: int) -> None:
        """Count `size` more bytes downloaded, or refuse the download that would pass the total."""
        with self._lock:
            if self.fetched + size > self.max_bytes:
                raise DownloadBudgetExceeded(f"the request's downloads passed {self.max_bytes} bytes")
            self.fetched += size

    def left(self) -> int:
        with self._lock:
            return self.max_bytes - self.fetched

    @contextmanager
    def connection(self, host: str, deadline: _Deadline) -> Iterator[None]:
        """One of the request's connections to host, waiting for one until the fetch's deadline."""
        with self._lock:
            slots = self._hosts.setdefault(host, threading.BoundedSemaphore(self._per_host))
        if not slots.acquire(timeout=max(deadline.left(), 0.0)):
            raise UpstreamTimeout(f"deadline passed waiting for one of {self._per_host} connections to {host}")
        try:
            yield
        finally:
            slots.release()


class Fetcher:
    """Downloads one image per call under a FetchPolicy; safe to share between threads.

    urllib3 directly: one connection pool per hop, keyed to the checked address, with the URL's host
    kept for the Host header, SNI and the certificate check (requests-hardened's pinning technique
    with our guard). Not requests: its Session reads the whole body of every 3xx response.
    """

    def __init__(self, policy: FetchPolicy, resolver: Resolver = system_resolver, ca_certs: str | None = None) -> None:
        self.policy = policy
        self._ca_certs = ca_certs or certifi.where()  # the CA bundle for https (tests pass their own)
        self._guard = _Guard(policy, resolver)
        self._watchdog = _Watchdog()

    def fetch(
        self, url: str, *, timeout: float | None = None, caller: str = "-", share: RequestShare | None = None
    ) -> IO[bytes]:
        """The image bytes, rewound, in a SpooledTemporaryFile the caller must close; within the
        policy's download timeout, or `timeout` seconds if that is shorter (a batch's time left).
        `caller` (a client address) gets its fair share of the host-name lookups; `share` (the
        request's) bounds its connections per host and its bytes, with the request's other fetches."""
        seconds = self.policy.download_timeout if timeout is None else min(timeout, self.policy.download_timeout)
        _current.caller = caller
        share = share or RequestShare(self.policy.max_bytes, 1)
        with self._deadline(seconds) as deadline:
            for _hop in range(self.policy.max_redirects + 1):
                target = check_url(url, self.policy)
                with share.connection(target.host, deadline), self._get(target, deadline) as response:
                    if response.status in _REDIRECTS:
                        # The connection closes with the pool, unread: a redirect's body may be
                        # endless or a bomb.
                        location = response.headers.get("Location")
                        if not location:
                            raise UpstreamError(f"redirect {response.status} without Location")
                        # Without its query: a signed URL's signature would land in the log.
                        log.info("redirect %d to %r", response.status, location.split("?", 1)[0][:200])
                        url = urljoin(target.url, location)
                        continue
                    if response.status != 200:
                        raise UpstreamError(f"upstream status {response.status}")
                    return self._read_body(response, deadline, share=share)
            raise TooManyRedirects(f"more than {self.policy.max_redirects} redirects")

    @contextmanager
    def _deadline(self, seconds: float) -> Iterator[_Deadline]:
        """One request's deadline, watched, and known to the connections this thread opens."""
        deadline = _current.deadline = _Deadline(seconds)
        self._watchdog.add(deadline)
        try:
            yield deadline
        finally:
            deadline.finish()

    @contextmanager
    def _get(
        self,
        target: Target,
        deadline: _Deadline,
        body: bytes | None = None,
        content_type: str = "",
        extra_headers: Mapping[str, str] | None = None,
        read_timeout: float | None = None,
    ) -> Iterator[urllib3.BaseHTTPResponse]:
        """The response to GET target.url (POST when there is a body), its headers read; the pool and its
        connection close on exit. Each read waits NSFW_READ_TIMEOUT at most, or `read_timeout`."""
        off_model(f"a connection to {target.host}")
        left = deadline.left()
        if left <= 0:
            raise UpstreamTimeout("deadline passed before connecting")
        ip = self._guard(target.host, target.port, left)
        per_read = self.policy.read_timeout if read_timeout is None else read_timeout
        timeout = urllib3.Timeout(connect=min(self.policy.connect_timeout, left), read=min(per_read, left))
        pool: HTTPConnectionPool
        if target.scheme == "https":
            pool = _WatchedHTTPSPool(
                str(ip),
                target.port,
                timeout=timeout,
                retries=False,
                cert_reqs="CERT_REQUIRED",
                ca_certs=self._ca_certs,
                server_hostname=target.host,
                assert_hostname=target.host,
            )
        else:
            pool = _WatchedHTTPPool(str(ip), target.port, timeout=timeout, retries=False)
        host = f"[{target.host}]" if ":" in target.host else target.host
        headers = {
            **REQUEST_HEADERS,
            "Host": host if target.port == DEFAULT_PORTS[target.scheme] else f"{host}:{target.port}",
        }
        if body is not None:
            headers |= {"Content-Type": content_type, "Accept": "application/json", **(extra_headers or {})}
        try:
            response = pool.urlopen(
                "GET" if body is None else "POST",
                urllib3.util.parse_url(target.url).request_uri,
                body=body,
                headers=headers,
                redirect=False,
                retries=False,
                preload_content=False,
                release_conn=False,
                assert_same_host=False,
            )
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            pool.close()
            # NewConnectionError subclasses ConnectTimeoutError in urllib3 2, but means refused.
            timed_out = isinstance(exc, urllib3.exceptions.TimeoutError | TimeoutError) and not isinstance(
                exc, urllib3.exceptions.NewConnectionError
            )
            if deadline.expired or timed_out:
                raise UpstreamTimeout(f"{type(exc).__name__}: {exc}") from None
            raise UpstreamError(f"{type(exc).__name__}: {exc}") from None
        try:
            yield response
        finally:
            response.close()
            pool.close()  # no connection outlives its fetch, or is reused by the next one

    def post(self, url: str, body: bytes, *, content_type: str, timeout: float, max_bytes: int) -> bytes:
        """POST body to url (an operator's endpoint) under the same guard, no redirects followed;
        the answer's body, at most max_bytes, within timeout seconds."""
        with self._deadline(timeout) as deadline:
            target = check_url(url, self.policy)
            with self._get(target, deadline, body, content_type) as response:
                if response.status != 200:
                    raise UpstreamError(f"{url.split('?', 1)[0]}: status {response.status}")
                with self._read_body(response, deadline, max_bytes) as answer:
                    return answer.read()

    def deliver(self, url: str, body: bytes, *, headers: Mapping[str, str], timeout: float) -> int:
        """POST a JSON body with headers (a signed webhook) to url under the same guard, no redirects
        followed; the status when it is 2xx, else UpstreamError (UpstreamTimeout past timeout, which
        bounds the whole attempt: a receiver may take all of it to answer, NSFW_READ_TIMEOUT is an
        image host's). The answer's body is not read. No error names the URL's path or query (a
        receiver's token may be there)."""
        with self._deadline(timeout) as deadline:
            target = check_url(url, self.policy)
            with self._get(target, deadline, body, "application/json", headers, read_timeout=timeout) as response:
                if not 200 <= response.status < 300:
                    raise UpstreamError(f"receiver status {response.status}")
                return int(response.status)

    def _read_body(
        self,
        raw: urllib3.BaseHTTPResponse,
        deadline: _Deadline,
        limit: int | None = None,
        share: RequestShare | None = None,
    ) -> IO[bytes]:
        image_cap = self.policy.max_bytes if limit is None else limit
        # Until its first bytes say whether it is a video, a body may be as long as a video may.
        video_cap = max(image_cap, self.policy.max_video_bytes) if limit is None else image_cap
        declared = raw.headers.get("Content-Length", "")
        # The host's Content-Type never says what the bytes are (they are sniffed), but it may make us
        # refuse sooner: a body it calls anything but a video (or untyped) keeps an image's cap on its
        # declared length, so a 50 MB "image/jpeg" is refused before a byte is read.
        said = raw.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
        if said and not said.startswith("video/") and said != "application/octet-stream":
            video_cap = image_cap
        max_bytes, head = video_cap, b""
        if declared.isascii() and declared.isdigit() and int(declared) > max_bytes:
            raise ImageTooLarge(f"Content-Length {declared}")
        if share is not None and declared.isascii() and declared.isdigit() and int(declared) > share.left():
            raise DownloadBudgetExceeded(f"Content-Length {declared} over the request's {share.left()} bytes left")
        spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES)
        try:
            total = 0
            while True:
                left = deadline.left()
                if left <= 0:
                    raise UpstreamTimeout(f"download deadline passed after {total} bytes")
                _set_read_timeout(raw, min(self.policy.read_timeout, left))
                try:
                    # read1: one read from the socket, so a slow drip cannot hold us past the deadline;
                    # decoded output is capped at CHUNK_BYTES, so a gzip bomb inflates one chunk at a time.
                    chunk = raw.read1(CHUNK_BYTES, decode_content=True)
                except (urllib3.exceptions.ReadTimeoutError, TimeoutError) as exc:
                    raise UpstreamTimeout(f"read: {exc}") from None
                except (urllib3.exceptions.HTTPError, OSError) as exc:
                    if deadline.expired:
                        raise UpstreamTimeout(f"read cut at the deadline: {exc}") from None
                    raise UpstreamError(f"read: {type(exc).__name__}: {exc}") from None
                if not chunk:
                    break
                if len(head) < _HEAD and max_bytes != image_cap:
                    head += chunk[: _HEAD - len(head)]
                    if len(head) >= _HEAD and not self.policy.is_video(head):
                        max_bytes = image_cap  # not a video: an image's cap, the declared length too
                        if declared.isascii() and declared.isdigit() and int(declared) > max_bytes:
                            raise ImageTooLarge(f"Content-Length {declared}")
                total += len(chunk)
                if total > max_bytes:
                    raise ImageTooLarge(f"body passed {max_bytes} bytes")
                if share is not None:
                    share.take(len(chunk))
                spool.write(chunk)
            if deadline.expired:  # the watchdog's shutdown looks like the end of a body
                raise UpstreamTimeout(f"download deadline passed after {total} bytes")
            if total > image_cap and not self.policy.is_video(head):  # shorter than a head: not a video
                raise ImageTooLarge(f"body of {total} bytes")
            if total == 0:
                raise InvalidImage("empty body")
            spool.seek(0)
            return spool
        except BaseException:
            spool.close()
            raise


def _set_read_timeout(raw: urllib3.BaseHTTPResponse, seconds: float) -> None:
    connection = getattr(raw, "connection", None)
    sock = getattr(connection, "sock", None)
    if sock is not None:
        sock.settimeout(max(seconds, 0.001))
