"""How often: rate limits (NSFW_RATE_LIMIT) with Flask-Limiter, per key (per client address without
one), their counters shared by the instance's workers (limitstore.py, or Redis) and failing open
when that store fails (NSFW_RATE_LIMIT_ON_ERROR). A batch costs one hit per item (`charge`), not one
for the request. Which routes are counted is the route table's (routes.py)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from flask import Flask, g, request
from flask_limiter import Limiter
from limits.errors import StorageError

from nsfw import metrics
from nsfw.errors import RateLimited, RateLimitUnavailable
from nsfw.web import answers, routes, state
from nsfw.web.access import client_address
from nsfw.web.limitstore import storage_uri

log = logging.getLogger(__name__)


def limit_key() -> str:
    """Whose requests count together: the key's name, or the client's address without a key."""
    name = g.get("api_key", "-")
    return f"key:{name}" if name != "-" else f"address:{client_address()}"


def install(
    app: Flask, rate_limit: str, instance_dir: Path | None, storage: str = "", on_error: str = "open"
) -> Limiter | None:
    """Flask-Limiter over every route the route table counts, per limit_key, its counters in Redis
    (storage, NSFW_RATE_LIMIT_STORAGE), else in the instance's shared SQLite file (nsfw/web/limitstore.py)
    when there is an instance folder, else in the process. Installed after access.install, so the key is
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
        default_limits_exempt_when=lambda: not routes.route_for(request.path).limited,
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
    state.edge(app).limiter = limiter
    state.edge(app).limits_closed = closed
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
    limiter = state.edge().limiter
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
        if state.edge().limits_closed:
            raise RateLimitUnavailable(f"{type(exc).__name__}: {str(exc)[:200]}") from None
        log.warning("rate limit store failed charging a batch (%s); let through", type(exc).__name__)


def _limits_unavailable(error: StorageError) -> Any:
    refused = RateLimitUnavailable(f"{type(error.storage_error).__name__}: {str(error.storage_error)[:200]}")
    log.warning("rate limit store failed, NSFW_RATE_LIMIT_ON_ERROR=closed -> 503: %s", refused.detail)
    return answers.in_the_callers_shape(refused)
