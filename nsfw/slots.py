"""Who may fetch or compute right now, per worker.

- FairSlots: at most `total` holders at once, at most `per_caller` of them for any one caller (a
  client address), so that one caller's slow requests cannot take every slot from the others. With a
  group (the image host), spare slots beyond both shares (`spare_per_caller`, `spare`) go only to a
  group that holds none of the slots in question: a caller's slow upstream host may fill that
  caller's share (and several callers the worker's), yet the caller's (and the worker's) other hosts
  keep flowing, and a caller whose images all come from one host keeps its whole share. Thread-safe;
  also used from the event loop (non-blocking).
- ModelLock: the worker's model, one image at a time; not re-entrant, and loud about it.
- off_model: the guard every network call and every wait on a shared store passes (fetch.py,
  cache.py): none may run while this thread holds the model, or one slow peer stalls the worker.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager


class FairSlots:
    def __init__(self, total: int, per_caller: int, *, spare_per_caller: int = 0, spare: int = 0) -> None:
        if not 1 <= per_caller <= total:
            raise ValueError(f"per_caller {per_caller} must be 1..{total}")
        self.total = total
        self.per_caller = per_caller
        self.spare_per_caller = spare_per_caller
        self.spare = spare
        self._held: Counter[str] = Counter()
        self._held_in_group: Counter[tuple[str, str]] = Counter()
        self._group_held: Counter[str] = Counter()
        self._in_use = 0
        self._changed = threading.Condition()

    def _free_for(self, caller: str, group: str | None) -> bool:
        within_total = self._in_use < self.total
        within_share = self._held[caller] < self.per_caller
        if within_total and within_share:
            return True
        if group is None:
            return False
        # The spare slots: only for a host that holds none (of this caller's, or of the worker's).
        if not within_share and (
            self._held_in_group[caller, group] or self._held[caller] >= self.per_caller + self.spare_per_caller
        ):
            return False
        return within_total or not self._group_held[group] and self._in_use < self.total + self.spare

    def try_acquire(self, caller: str, timeout: float = 0.0, group: str | None = None) -> bool:
        """A slot for caller (from group, when given), waiting at most timeout seconds for one (0: not at all)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not self._free_for(caller, group):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
            self._held[caller] += 1
            if group is not None:
                self._held_in_group[caller, group] += 1
                self._group_held[group] += 1
            self._in_use += 1
            return True

    def release(self, caller: str, group: str | None = None) -> None:
        with self._changed:
            if self._held[caller] <= 0 or group is not None and self._held_in_group[caller, group] <= 0:
                raise RuntimeError(f"{caller} holds no slot" + ("" if group is None else f" of {group}"))
            self._held[caller] -= 1
            if not self._held[caller]:
                del self._held[caller]
            if group is not None:
                self._held_in_group[caller, group] -= 1
                if not self._held_in_group[caller, group]:
                    del self._held_in_group[caller, group]
                self._group_held[group] -= 1
                if not self._group_held[group]:
                    del self._group_held[group]
            self._in_use -= 1
            self._changed.notify_all()

    @contextmanager
    def holding(self, caller: str, timeout: float, refuse: Exception, group: str | None = None) -> Iterator[None]:
        """Hold a slot for the block; raise `refuse` when none comes within timeout."""
        if not self.try_acquire(caller, timeout, group):
            raise refuse
        try:
            yield
        finally:
            self.release(caller, group)

    @property
    def in_use(self) -> int:
        return self._in_use


# The threads that hold a worker's model right now (one at most per ModelLock; a test may make several).
_holding_model = threading.local()


class ModelLock:
    """The worker's model: decoding and inference, one image at a time.

    Not re-entrant, and it says so at once: a thread that holds it and asks for it again would wait
    for itself until NSFW_COMPUTE_WAIT ran out (a 503 for that request and every one behind it), so
    that is a RuntimeError, a bug to fix, not a wait."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owner: int | None = None
        self._waiting = 0
        self._count = threading.Lock()

    def acquire(self, timeout: float) -> bool:
        if self._owner == threading.get_ident():
            raise RuntimeError("this thread asked for the model it already holds")
        with self._count:
            self._waiting += 1
        try:
            if not self._lock.acquire(timeout=max(timeout, 0.0)):
                return False
        finally:
            with self._count:
                self._waiting -= 1
        self._owner = threading.get_ident()
        _holding_model.depth = getattr(_holding_model, "depth", 0) + 1
        return True

    def release(self) -> None:
        self._owner = None
        _holding_model.depth -= 1
        self._lock.release()

    @property
    def waiting(self) -> int:
        """Threads waiting for the model now (the tests line requests up behind each other with it)."""
        return self._waiting

    def held(self) -> bool:
        """Whether this thread holds the model."""
        return self._owner == threading.get_ident()


def holds_a_model() -> bool:
    return getattr(_holding_model, "depth", 0) > 0


def off_model(what: str) -> None:
    """Refuse `what` (a network call, a wait on a shared store) on a thread that holds the model: one
    slow peer would stall every request of the worker behind it. A RuntimeError: a bug, never a wait."""
    if holds_a_model():
        raise RuntimeError(f"{what} while holding the model's lock")
