"""Who may try a password now: the sign-in limits and the password checks at once. No Flask.

- Failures are counted, not attempts, and per name *and* address: ten wrong guesses for alice from one
  address stop that address guessing alice's password, not alice signing in from anywhere else. A
  ceiling per name over all addresses (much higher) bounds what many addresses can guess, and holds
  only against the addresses that failed for that name: an address with no failure for it (alice at
  her desk) is never refused by it, so no number of guessing addresses locks her out; guessing goes
  on at one try per fresh address. One per address over all names bounds one address trying many
  names. An IPv6 client counts by its /64 (what one host is usually given), so a block of addresses
  is one address here.
- The counters live where the other rate limits do (NSFW_RATE_LIMIT_STORAGE, else NSFW_REDIS_URL,
  else the instance's SQLite file), so every worker and instance counts together. Redis is asked with
  a second's timeout and no retries; a store that fails is left alone for a while, and, as for the
  other limits, NSFW_RATE_LIMIT_ON_ERROR=open lets this worker's own counters stand in (closed: a
  503), logged and counted in nsfw_rate_limit_errors_total.
- At most CHECKS_AT_ONCE password checks run at once per worker (each takes Argon2's memory, 19 MiB,
  for a made-up name too); a sign-in past them is a fast 503 with Retry-After, never a queue of
  hashes in memory.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from limits import parse
from limits.storage import MemoryStorage, storage_from_string
from limits.strategies import FixedWindowRateLimiter

from nsfw.breaker import Breaker
from nsfw.errors import RateLimitUnavailable

log = logging.getLogger(__name__)

# Wrong passwords: for one name from one address...
PER_NAME_AND_ADDRESS = parse("10/minute")
# ...for one name from anywhere (a ceiling against many addresses guessing one password)...
PER_NAME = parse("100/minute")
# ...and from one address for any names.
PER_ADDRESS = parse("30/minute")
CHECKS_AT_ONCE = 2
# A failing counter store is left alone this long (this worker's counters stand in meanwhile).
STORE_BACKOFF_SECONDS = 30.0


def _prefix(address: str) -> str:
    """The address the limits count: an IPv6 client by its /64, an IPv4 one as itself."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)  # an IPv4 client on a dual-stack socket
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class SignInBusy(Exception):
    """Every password check of this worker is running (the sign-in page answers 503 with Retry-After;
    not in the API's error tree, whose codes are unique: the page is HTML)."""


class SignInGuard:
    def __init__(self, storage_uri: str, options: dict[str, Any], *, fail_closed: bool) -> None:
        self._uri = storage_uri
        self._options = options
        self._shared: FixedWindowRateLimiter | None = None
        self._own = FixedWindowRateLimiter(MemoryStorage())
        self._breaker = Breaker(1, STORE_BACKOFF_SECONDS)
        self._fail_closed = fail_closed
        self._checks = threading.BoundedSemaphore(CHECKS_AT_ONCE)

    def _call(self, check: Callable[[FixedWindowRateLimiter], bool]) -> bool:
        """check(counters), on the shared store while it answers, else on this worker's."""
        if self._breaker.allow():
            try:
                if self._shared is None:
                    self._shared = FixedWindowRateLimiter(storage_from_string(self._uri, **self._options))
                result = check(self._shared)
            except Exception as exc:  # noqa: BLE001 - any failure of the store; its storage counts it
                self._breaker.failed()
                log.warning("sign-in limits: the counter store failed (%s: %s)", type(exc).__name__, str(exc)[:200])
                if self._fail_closed:
                    raise RateLimitUnavailable(f"sign-in limits: {type(exc).__name__}") from None
            else:
                self._breaker.succeeded()
                return result
        elif self._fail_closed:
            raise RateLimitUnavailable("sign-in limits: the counter store failed recently")
        return check(self._own)

    def allowed(self, name: str, address: str) -> bool:
        """Whether name may be tried from address now: this address has failures left for this name
        and for all names, and, if it failed for this name before, the name's ceiling is not reached."""
        here = _prefix(address)

        def check(counters: FixedWindowRateLimiter) -> bool:
            if not counters.test(PER_NAME_AND_ADDRESS, "login-name-address", name, here):
                return False
            if not counters.test(PER_ADDRESS, "login-address", here):
                return False
            failed_here = (
                counters.get_window_stats(PER_NAME_AND_ADDRESS, "login-name-address", name, here).remaining
                < PER_NAME_AND_ADDRESS.amount
            )
            return not failed_here or counters.test(PER_NAME, "login-name", name)

        return self._call(check)

    def failed(self, name: str, address: str) -> None:
        """Count a wrong password (or an unknown name) for name from address."""
        here = _prefix(address)

        def count(counters: FixedWindowRateLimiter) -> bool:
            counters.hit(PER_NAME_AND_ADDRESS, "login-name-address", name, here)
            counters.hit(PER_NAME, "login-name", name)
            counters.hit(PER_ADDRESS, "login-address", here)
            return True

        self._call(count)

    @contextmanager
    def checking(self) -> Iterator[None]:
        """One of the worker's password checks, now, or SignInBusy (503)."""
        if not self._checks.acquire(blocking=False):
            raise SignInBusy(f"{CHECKS_AT_ONCE} password checks running")
        try:
            yield
        finally:
            self._checks.release()
