"""A circuit breaker: stop asking a peer (Redis, a counter store) that keeps failing, for a while."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Breaker:
    """Stops asking a peer that keeps failing: after `failures` failures in a row it is skipped for
    `seconds`; then one call (the first to ask) probes it, and the others keep skipping until that
    call succeeds or fails. Thread-safe."""

    def __init__(self, failures: int, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.failures = failures
        self.seconds = seconds
        self.clock = clock
        self._failed = 0
        self._open_until = 0.0
        self._lock = threading.Lock()

    def allow(self) -> bool:
        with self._lock:
            if self._failed < self.failures:
                return True
            now = self.clock()
            if now < self._open_until:
                return False
            self._open_until = now + self.seconds  # this call probes; the rest skip meanwhile
            return True

    def succeeded(self) -> None:
        with self._lock:
            self._failed = 0
            self._open_until = 0.0

    def failed(self) -> bool:
        """Count a failure; True when it (re)opened the breaker."""
        with self._lock:
            self._failed += 1
            if self._failed < self.failures:
                return False
            self._open_until = self.clock() + self.seconds
            return self._failed == self.failures

    @property
    def open(self) -> bool:
        with self._lock:
            return self._failed >= self.failures and self.clock() < self._open_until
