"""Who may call, and how often: API keys and their scopes (NSFW_API_KEYS), rate limits (NSFW_RATE_LIMIT).

- With no key set the service is open, as NSFW-FLASK's clients expect (gunicorn.conf.py warns once at
  boot). With any key set, every route but the open ones needs a key with the route's scope: none,
  or a wrong one, is 401 `unauthorized` with `WWW-Authenticate: Bearer`; a key without the scope is
  403 `forbidden`.
- The token comes from `Authorization: Bearer <token>` or `X-API-Key: <token>`, never from the query
  string: a URL ends up in access logs, proxies' logs and browser history.
- Tokens are compared in constant time: the presented token's sha256 is compared with every key's
  with hmac.compare_digest, all of them every time, so neither its length nor which key matched
  shows in the timing.
- The front door (nsfw/frontend.py) checks before it reads a body, so a stranger cannot make a worker
  receive 14 MB; the app checks again (for any other server in front of it). The key's name, never
  its token, is what the logs see.
- Rate limits are Flask-Limiter's, per key (per client address without one), their counters shared
  by the instance's workers (nsfw/limitstore.py) and failing open when that store fails.
- The client address is the socket's, unless the socket's peer is one of NSFW_TRUSTED_PROXIES: then
  NSFW_CLIENT_ADDRESS_HEADER says it: X-Forwarded-For read from the right, or a single-address
  header (DO-Connecting-IP) as the one value its proxy set, never a list the client wrote.
- A batch costs one hit per item (`charge`), not one for the request.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from flask import Flask, Response, current_app, g, request
from flask_limiter import Limiter
from limits.errors import StorageError

from nsfw import metrics
from nsfw.config import ApiKey, IPNetwork
from nsfw.errors import Forbidden, RateLimited, RateLimitUnavailable, Unauthorized
from nsfw.limitstore import storage_uri

log = logging.getLogger(__name__)

# Answered to anyone: the platform's probe, and the API's description with its Swagger UI.
OPEN_PATHS = frozenset({"/health", "/openapi.json", "/docs"})
_OPEN_PREFIX = "/docs/"
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_BEARER = "bearer "


# The moderator's pages sign in with a session of their own (nsfw/review/pages.py), never a key.
PAGES_PATH = "/review"


def is_page(path: str) -> bool:
    return path == PAGES_PATH or path.startswith(PAGES_PATH + "/")


def scope_for(path: str) -> str | None:
    """The scope a path needs; None for an open one (or a page, which asks for its session). Unknown
    paths need `predict`, so that a stranger learns nothing about which routes exist."""
    if path in OPEN_PATHS or path.startswith(_OPEN_PREFIX) or is_page(path):
        return None
    if path.startswith("/reviews"):  # the review API: a review key, or a moderator's session
        return "review"
    return "predict"


SESSION_COOKIE = "nsfw_session="


def may_use_session(path: str, header: Callable[[str], str | None]) -> bool:
    """A review API request carrying a moderator's session cookie: the app decides (the front door
    cannot read a session), with its CSRF check."""
    return path.startswith("/reviews") and SESSION_COOKIE in (header("Cookie") or "")


def request_scheme() -> str:
    """http or https, as the client used it: the socket's, or a trusted proxy's X-Forwarded-Proto."""
    settings = current_app.extensions["nsfw"].settings
    if _is_trusted(request.remote_addr or "-", settings.trusted_proxies):
        forwarded = (request.headers.get("X-Forwarded-Proto") or "").split(",")[-1].strip().lower()
        if forwarded in ("http", "https"):
            return forwarded
    return request.scheme


def presented_token(header: Callable[[str], str | None]) -> str | None:
    """The token of `Authorization: Bearer <token>`, else of `X-API-Key`; None when neither is there."""
    authorization = header("Authorization") or ""
    if authorization[: len(_BEARER)].lower() == _BEARER:
        return authorization[len(_BEARER) :].strip() or None
    return (header("X-API-Key") or "").strip() or None


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def authenticate(token: str, keys: Sequence[ApiKey]) -> ApiKey | None:
    """The key whose token this is, comparing against every key in constant time."""
    presented = _digest(token)
    found = None
    for key in keys:
        if hmac.compare_digest(presented, _digest(key.token)):
            found = key
    return found


METRICS_PATH = "/metrics"


def check(
    path: str, header: Callable[[str], str | None], keys: Sequence[ApiKey], metrics_token: str = ""
) -> ApiKey | None:
    """The caller's key for path (None when the service is open or the path is), or raise 401 / 403.
    With NSFW_METRICS_TOKEN set, /metrics asks for that token instead of a key."""
    if path == METRICS_PATH and metrics_token:
        token = presented_token(header)
        if token is None or not hmac.compare_digest(_digest(token), _digest(metrics_token)):
            raise Unauthorized("no or a wrong metrics token")
        return None
    scope = scope_for(path)
    if not keys or scope is None:
        return None
    token = presented_token(header)
    key = authenticate(token, keys) if token else None
    if key is None:
        raise Unauthorized("no API key" if token is None else "unknown API key")
    if scope not in key.scopes:
        raise Forbidden(f"key {key.name} lacks the {scope} scope for {path}")
    return key


# Never limited: the platform's probe, and the scraper's page.
UNLIMITED_PATHS = frozenset({"/health", METRICS_PATH})


def _address(hop: str) -> IPAddress | None:
    """One hop of a forwarded-for list as an address: `1.2.3.4`, `1.2.3.4:5678`, `::1`, `[::1]:5678`."""
    hop = hop.strip()
    if hop.startswith("["):
        hop = hop[1 : hop.find("]")] if "]" in hop else ""
    elif hop.count(":") == 1:
        hop = hop.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(hop)
    except ValueError:
        return None
    # An IPv4 client on a dual-stack socket is ::ffff:a.b.c.d; the proxies are written as IPv4.
    return address.ipv4_mapped or address if isinstance(address, ipaddress.IPv6Address) else address


def _trusted(address: IPAddress, proxies: Sequence[IPNetwork]) -> bool:
    return any(address.version == network.version and address in network for network in proxies)


def client_of(peer: str, forwarded: Sequence[str], proxies: Sequence[IPNetwork], *, single: bool = False) -> str:
    """The client's address: the socket's peer, unless that peer is a trusted proxy; then

    - a list header (X-Forwarded-For): its hops are read from the right (each proxy appends the
      address it saw), and the first one that is not a trusted proxy is the client. A hop that is
      not an address ends the walk at the proxy that wrote it. Hops left of the client are whatever
      the client sent, and are never read;
    - a single-address header (`single`, DO-Connecting-IP): the last value, which is the one the
      trusted proxy set (a proxy that appends puts its own after whatever the client sent); never a
      walk, since every hop of it may be the client's own words."""
    address = _address(peer)
    if address is None or not _trusted(address, proxies):
        return peer or "-"
    client = str(address)
    if single:
        values = [hop for value in forwarded for hop in value.split(",")]
        last = _address(values[-1]) if values else None
        return client if last is None else str(last)
    for hop in reversed([hop for value in forwarded for hop in value.split(",")]):
        hop_address = _address(hop)
        if hop_address is None:
            return client
        client = str(hop_address)
        if not _trusted(hop_address, proxies):
            return client
    return client


def client_address() -> str:
    """The address of the client of this request, which the fair shares (nsfw/slots.py) and the rate
    limits count by: the socket's peer, or what trusted proxies say (NSFW_TRUSTED_PROXIES)."""
    if "client_address" not in g:
        settings = current_app.extensions["nsfw"].settings
        peer = request.remote_addr or "-"
        if settings.trusted_proxies:
            forwarded = request.headers.getlist(settings.client_address_header)
            single = not settings.forwards_a_list
            g.client_address = client_of(peer, forwarded, settings.trusted_proxies, single=single)
        else:
            g.client_address = peer
    return str(g.client_address)


def limit_key() -> str:
    """Whose requests count together: the key's name, or the client's address without a key."""
    name = g.get("api_key", "-")
    return f"key:{name}" if name != "-" else f"address:{client_address()}"


def install_limits(
    app: Flask, rate_limit: str, instance_dir: Path | None, storage: str = "", on_error: str = "open"
) -> Limiter | None:
    """Flask-Limiter over every route but UNLIMITED_PATHS, per limit_key, its counters in Redis
    (storage, NSFW_RATE_LIMIT_STORAGE), else in the instance's shared SQLite file (nsfw/limitstore.py)
    when there is an instance folder, else in the process. Installed after `install`, so the key is
    known when the limit is checked."""
    if not rate_limit:
        return None
    closed = on_error == "closed"
    if closed:
        app.register_error_handler(StorageError, _limits_unavailable)
    options: dict[str, object] = {"wrap_exceptions": closed}
    if storage:  # Redis: a connection that hangs fails the check in a second, not a request's worth of time
        options |= redis_options()
    limiter = Limiter(
        limit_key,
        app=app,
        default_limits=[rate_limit],
        default_limits_exempt_when=lambda: request.path in UNLIMITED_PATHS,
        storage_uri=storage_uri(storage, instance_dir),
        storage_options=options,
        strategy="fixed-window",
        headers_enabled=True,
        # A failing counter store (Redis down, a full tmpfs), NSFW_RATE_LIMIT_ON_ERROR=open (default):
        # counters in this process's memory stand in until it answers again (Flask-Limiter checks it
        # with a backoff), and a failure of those lets the request through; closed: 503
        # rate_limit_unavailable. Logged, counted by nsfw_rate_limit_errors_total; never a 500.
        in_memory_fallback_enabled=not closed,
        swallow_errors=not closed,
    )
    app.extensions["nsfw.limiter"] = limiter
    app.extensions["nsfw.limits_closed"] = closed
    return limiter


REDIS_SECONDS = 1.0


def redis_options() -> dict[str, object]:
    """Options of a Redis client the limits use: a second per call, once. redis-py's default retries
    a timeout 3 times with a backoff of up to 10 s: a silent Redis held a sign-in more than 30 s."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return {"socket_timeout": REDIS_SECONDS, "socket_connect_timeout": REDIS_SECONDS, "retry": Retry(NoBackoff(), 0)}


def charge(extra: int) -> None:
    """Count `extra` more hits against every limit this request was counted against (a batch's items
    beyond its first: each item costs what a request of its own would), or refuse with 429 when the
    caller's allowance cannot cover them (nothing more is counted then). A failing counter store is
    NSFW_RATE_LIMIT_ON_ERROR's business, as for the request itself."""
    limiter: Limiter | None = current_app.extensions.get("nsfw.limiter")
    if limiter is None or extra <= 0:
        return
    applied = [limit for limit in limiter.current_limits if not limit.breached]
    try:
        for limit in applied:
            if not limit.limiter.test(limit.limit, *limit.request_args, cost=extra):
                raise RateLimited(f"{extra + 1} items over {limit.limit} for {limit.request_args[0]}")
        for limit in applied:
            limit.limiter.hit(limit.limit, *limit.request_args, cost=extra)
    except RateLimited as refused:
        window = applied[0].limiter.get_window_stats(applied[0].limit, *applied[0].request_args) if applied else None
        if window is not None:
            refused.headers = {"Retry-After": str(max(1, int(window.reset_time - time.time()) + 1))}
        raise
    except Exception as exc:  # noqa: BLE001 - the store failed: as Flask-Limiter does for the request
        metrics.RATE_LIMIT_ERRORS.inc()
        if current_app.extensions.get("nsfw.limits_closed"):
            raise RateLimitUnavailable(f"{type(exc).__name__}: {str(exc)[:200]}") from None
        log.warning("rate limit store failed charging a batch (%s); let through", type(exc).__name__)


def _is_trusted(peer: str, proxies: Sequence[IPNetwork]) -> bool:
    address = _address(peer)
    return address is not None and _trusted(address, proxies)


def _limits_unavailable(error: StorageError) -> tuple[dict[str, object], int, dict[str, str]]:
    refused = RateLimitUnavailable(f"{type(error.storage_error).__name__}: {str(error.storage_error)[:200]}")
    log.warning("rate limit store failed, NSFW_RATE_LIMIT_ON_ERROR=closed -> 503: %s", refused.detail)
    return refused.to_dict(), refused.status, dict(refused.headers)


def install(app: Flask, keys: Sequence[ApiKey], metrics_token: str = "") -> None:
    """Check every request of the Flask app before anything else reads it; `g.api_key` is the key's
    name (or, on the review API, the moderator a session signs in)."""

    @app.before_request
    def _require_a_key() -> None:
        if request.path.startswith("/reviews") and presented_token(request.headers.get) is None:
            session_moderator = app.extensions.get("nsfw.session_moderator")
            name = session_moderator() if session_moderator is not None else None
            if name is not None:
                g.api_key = name
                return
        key = check(request.path, request.headers.get, keys, metrics_token)
        g.api_key = key.name if key else "-"

    @app.after_request
    def _https_only(response: Response) -> Response:
        """A client that came over https (directly or through a trusted proxy) keeps to https here."""
        if request_scheme() == "https":
            response.headers.setdefault("Strict-Transport-Security", HSTS)
        return response


# A year, this host only (the service's operator decides about its subdomains).
HSTS = "max-age=31536000"
