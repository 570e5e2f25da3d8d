"""Fair shares of a worker's capacity: at most `total` holders at once, at most `per_caller` of them
for any one caller (a client address now, an API key later), so that one caller's slow requests
cannot take every slot from the others. Thread-safe; also used from the event loop (non-blocking)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager


class FairSlots:
    def __init__(self, total: int, per_caller: int) -> None:
        if not 1 <= per_caller <= total:
            raise ValueError(f"per_caller {per_caller} must be 1..{total}")
        self.total = total
        self.per_caller = per_caller
        self._held: Counter[str] = Counter()
        self._in_use = 0
        self._changed = threading.Condition()

    def _free_for(self, caller: str) -> bool:
        return self._in_use < self.total and self._held[caller] < self.per_caller

    def try_acquire(self, caller: str, timeout: float = 0.0) -> bool:
        """A slot for caller, waiting at most timeout seconds for one (0: not at all)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not self._free_for(caller):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
            self._held[caller] += 1
            self._in_use += 1
            return True

    def release(self, caller: str) -> None:
        with self._changed:
            if self._held[caller] <= 0:
                raise RuntimeError(f"{caller} holds no slot")
            self._held[caller] -= 1
            if not self._held[caller]:
                del self._held[caller]
            self._in_use -= 1
            self._changed.notify_all()

    @contextmanager
    def holding(self, caller: str, timeout: float, refuse: Exception) -> Iterator[None]:
        """Hold a slot for the block; raise `refuse` when none comes within timeout."""
        if not self.try_acquire(caller, timeout):
            raise refuse
        try:
            yield
        finally:
            self.release(caller)

    @property
    def in_use(self) -> int:
        return self._in_use
