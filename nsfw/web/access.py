"""Who may call: API keys and their scopes (NSFW_API_KEYS), and who the client is.

- With no key set the service is open, as NSFW-FLASK's clients expect (gunicorn.conf.py warns once at
  boot). With any key set, every route but the open ones needs a key with the route's scope: none,
  or a wrong one, is 401 `unauthorized` with `WWW-Authenticate: Bearer`; a key without the scope is
  403 `forbidden`.
- The token comes from `Authorization: Bearer <token>` or `X-API-Key: <token>`, never from the query
  string: a URL ends up in access logs, proxies' logs and browser history.
- Tokens are compared in constant time: the presented token's sha256 is compared with every key's
  with hmac.compare_digest, all of them every time, so neither its length nor which key matched
  shows in the timing.
- Which scope a route needs, and whether a moderator's session may stand in for the key, is the
  route table's (routes.py).
- The front door (frontend.py) checks before it reads a body, so a stranger cannot make a worker
  receive 14 MB; the app checks again (for any other server in front of it). The key's name, never
  its token, is what the logs see.
- The client address is the socket's, unless the socket's peer is one of NSFW_TRUSTED_PROXIES: then
  NSFW_CLIENT_ADDRESS_HEADER says it: X-Forwarded-For read from the right, or a single-address
  header (DO-Connecting-IP) as the one value its proxy set, never a list the client wrote.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Callable, Collection, Sequence

from flask import Flask, Response, g, request

from nsfw.config import ApiKey, IPNetwork
from nsfw.errors import Forbidden, Unauthorized
from nsfw.web import routes, state

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_BEARER = "bearer "


def scope_for(path: str) -> str | None:
    """The scope a path needs (nsfw/web/routes.py); None for an open one, or a page, which asks for its session."""
    return routes.route_for(path).scope


def request_scheme() -> str:
    """http or https, as the client used it: the socket's, or a trusted proxy's X-Forwarded-Proto."""
    settings = state.service().settings
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


def check(
    path: str,
    header: Callable[[str], str | None],
    keys: Sequence[ApiKey],
    metrics_token: str = "",
    open_platforms: Collection[str] = (),
) -> ApiKey | None:
    """The caller's key for path (None when the service is open or the path is), or raise 401 / 403.
    With NSFW_METRICS_TOKEN set, /metrics asks for that token instead of a key. A platform adapter's
    route is open when its platform is in open_platforms (NSFW_COMPAT_OPEN); one whose URL may carry
    the token (pict-rs, nsfw_api) takes it from its path first."""
    route = routes.route_for(path)
    if route.metrics_token and metrics_token:
        token = presented_token(header)
        if token is None or not hmac.compare_digest(_digest(token), _digest(metrics_token)):
            raise Unauthorized("no or a wrong metrics token")
        return None
    scope = route.scope
    if not keys or scope is None or route.platform in open_platforms:
        return None
    token = routes.path_token(path) or presented_token(header)
    key = authenticate(token, keys) if token else None
    if key is None:
        raise Unauthorized("no API key" if token is None else "unknown API key")
    if scope not in key.scopes:
        raise Forbidden(f"key {key.name} lacks the {scope} scope for {routes.redact_path(path)}")
    return key


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
    """The address of the client of this request, which the fair shares (nsfw/pipeline/flow.py) and the rate
    limits count by: the socket's peer, or what trusted proxies say (NSFW_TRUSTED_PROXIES)."""
    if "client_address" not in g:
        settings = state.service().settings
        peer = request.remote_addr or "-"
        if settings.trusted_proxies:
            forwarded = request.headers.getlist(settings.client_address_header)
            single = not settings.forwards_a_list
            g.client_address = client_of(peer, forwarded, settings.trusted_proxies, single=single)
        else:
            g.client_address = peer
    return str(g.client_address)


def _is_trusted(peer: str, proxies: Sequence[IPNetwork]) -> bool:
    address = _address(peer)
    return address is not None and _trusted(address, proxies)


def install(app: Flask, keys: Sequence[ApiKey], metrics_token: str = "", open_platforms: Collection[str] = ()) -> None:
    """Check every request of the Flask app before anything else reads it; `g.api_key` is the key's
    name (or, on the review API, the moderator a session signs in)."""

    @app.before_request
    def _require_a_key() -> None:
        if routes.route_for(request.path).session and presented_token(request.headers.get) is None:
            session_moderator = state.edge(app).session_moderator
            name = session_moderator() if session_moderator is not None else None
            if name is not None:
                g.api_key = name
                return
        key = check(request.path, request.headers.get, keys, metrics_token, open_platforms)
        g.api_key = key.name if key else "-"

    @app.after_request
    def _https_only(response: Response) -> Response:
        """A client that came over https (directly or through a trusted proxy) keeps to https here."""
        if request_scheme() == "https":
            response.headers.setdefault("Strict-Transport-Security", HSTS)
        return response


# A year, this host only (the service's operator decides about its subdomains).
HSTS = "max-age=31536000"
