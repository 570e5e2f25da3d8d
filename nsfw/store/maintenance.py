"""The worker's one background thread: every feature registers its duties with it.

A duty is (name, every seconds, callable). Each runs on its own schedule and fails alone: a store
that is down for a while must not end the thread, nor one duty's failure skip the others. A duty
that succeeded is due again `every` seconds later; one that raised is logged, counted
(nsfw_review_store_errors_total, by the duty's name) and tried again after min(every, 5) seconds,
not at once in a loop. A duty of every 0 s runs at each pass: once a second, or at once when the
thread's wake event is set. At exit (`close`) the thread stops and is joined, then the registered
closers run in the order they were registered.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from nsfw import metrics

log = logging.getLogger(__name__)

# Seconds between passes when nothing wakes the thread, and the longest a failed duty waits.
TICK = 1.0
RETRY_AT_MOST = 5.0
JOIN_SECONDS = 15.0


class Maintenance:
    """One thread, named `name`, running the registered duties (register before start). `wake`: the
    event that runs a pass at once when set (a feature's own, e.g. the webhook sender's), else one
    of the thread's."""

    def __init__(self, name: str = "store-maintenance", wake: threading.Event | None = None) -> None:
        self.name = name
        self.stop = threading.Event()
        self.wake = wake if wake is not None else threading.Event()
        self.thread: threading.Thread | None = None
        self._duties: list[tuple[str, float, Callable[[], object]]] = []
        self._closers: list[Callable[[], object]] = []
        self._due: dict[str, float] = {}

    def register(self, name: str, every: float, duty: Callable[[], object]) -> None:
        """Run duty every `every` seconds (0: at each pass), after the duties registered before it."""
        if any(name == known for known, _, _ in self._duties):
            raise ValueError(f"a maintenance duty named {name!r} is registered already")
        self._duties.append((name, every, duty))

    def on_close(self, closer: Callable[[], object]) -> None:
        """Run closer at `close`, after the thread stopped, after the closers registered before it."""
        self._closers.append(closer)

    def start(self) -> None:
        self.thread = threading.Thread(target=self.run, name=self.name, daemon=True)
        self.thread.start()

    def close(self) -> None:
        """Stop the thread (waiting JOIN_SECONDS at most for its pass), then run the closers in order
        (a worker's exit, or a test's end)."""
        self.stop.set()
        self.wake.set()
        if self.thread is not None:
            self.thread.join(JOIN_SECONDS)
        for closer in self._closers:
            closer()

    def pass_once(self) -> None:
        """One pass: every duty that is due."""
        now = time.monotonic()
        for name, every, duty in self._duties:
            if now < self._due.get(name, 0.0):
                continue
            try:
                duty()
                self._due[name] = now + every
            except Exception as exc:  # noqa: BLE001 - see the module's docstring
                log.warning("review maintenance: %s failed: %s: %s", name, type(exc).__name__, str(exc)[:300])
                metrics.REVIEW_STORE_ERRORS.labels(name).inc()
                self._due[name] = now + min(every, RETRY_AT_MOST)  # tried again soon, not at once in a loop

    def run(self) -> None:
        while not self.stop.is_set():
            self.pass_once()
            self.wake.wait(TICK)
            self.wake.clear()
