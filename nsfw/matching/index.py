"""Each worker's in-memory copy of the matcher's signals, searched by Hamming distance.

A brute-force scan over packed bits: the hashes as four columns of 64-bit words, XORed with a query
and counted with NumPy's popcount, column by column (each pass a contiguous sweep). One lookup is
each classified frame's hash against every signal (a decision's signals hold its frames' flips, turns
and crops, so a copy needs only its own hash); bench/matching.py measures
it at 10k, 100k and 1M signals (about 32 bytes a signal plus 16 of bookkeeping). Above a million,
multi-index hashing would be the next step (not built: README).

The index is derived: nsfw/matching/store.py loads it from `match_signals` and applies the changes
the store logs. Signals below NSFW_MATCH_MIN_QUALITY never enter it, and neither do frames below it
look anything up: a flat image's hash says nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from nsfw.matching.pdq import FrameHashes, distances, packed

BANK_PREFIX = "bank:"
_ADULT, _SAFE = 1, 0


@dataclass(frozen=True)
class Signal:
    """One row of match_signals, as the index holds it."""

    id: int
    owner: str  # a review item's id, or "bank:" and a bank's name
    label: str
    pdq: str
    quality: int | None
    distance: int  # the largest distance that matches it (its bank's, or NSFW_MATCH_DISTANCE)


@dataclass(frozen=True)
class Match:
    """The nearest signal of a kind that a lookup found."""

    owner: str
    label: str
    distance: int
    signal: int

    @property
    def bank(self) -> str | None:
        return self.owner[len(BANK_PREFIX) :] if self.owner.startswith(BANK_PREFIX) else None


@dataclass(frozen=True)
class Found:
    """What a lookup found for an image: the nearest human decision and bank signal of each label.
    Adult when any classified frame matches; safe only when every frame that could be looked up does
    (a harmless frame of an animation must not vouch for the rest)."""

    human_adult: Match | None = None
    human_safe: Match | None = None
    bank_adult: Match | None = None
    bank_safe: Match | None = None

    @property
    def human(self) -> Match | None:
        """The human decision that applies: adult first (a copy of something once called adult)."""
        return self.human_adult or self.human_safe


class Index:
    """The signals of one worker; thread-safe (the maintenance thread changes it while requests read)."""

    GROW = 1024

    def __init__(self, min_quality: int) -> None:
        self.min_quality = min_quality
        self._lock = threading.Lock()
        self._size = 0
        self._dead = 0
        self._words = np.zeros((4, self.GROW), dtype=np.uint64)
        self._limit = np.zeros(self.GROW, dtype=np.int16)  # -1: a dead row
        self._label = np.zeros(self.GROW, dtype=np.uint8)
        self._signal = np.zeros(self.GROW, dtype=np.int64)
        self._owner = np.zeros(self.GROW, dtype=np.int32)
        self._owners: list[str] = []
        self._owner_ids: dict[str, int] = {}

    def __len__(self) -> int:
        return self._size - self._dead

    @property
    def nbytes(self) -> int:
        """The arrays' memory (what a signal costs: bench/matching.py)."""
        return sum(a.nbytes for a in (self._words, self._limit, self._label, self._signal, self._owner))

    def add(self, signals: Iterable[Signal]) -> None:
        """Add signals (one already held, by id, is replaced)."""
        rows = [s for s in signals if s.quality is None or s.quality >= self.min_quality]
        if not rows:
            return
        with self._lock:
            ids = {s.id for s in rows}
            if self._size:
                held = np.isin(self._signal[: self._size], np.fromiter(ids, dtype=np.int64)) & (
                    self._limit[: self._size] >= 0
                )
                self._kill(held)
            self._reserve(self._size + len(rows))
            end = self._size + len(rows)
            self._words[:, self._size : end] = packed([s.pdq for s in rows])
            self._limit[self._size : end] = [s.distance for s in rows]
            self._label[self._size : end] = [_ADULT if s.label == "adult" else _SAFE for s in rows]
            self._signal[self._size : end] = [s.id for s in rows]
            self._owner[self._size : end] = [self._owner_id(s.owner) for s in rows]
            self._size = end

    def adopt(self, other: Index) -> None:
        """Take another index's signals (a load built off to the side, swapped in at once)."""
        with self._lock:
            for name in ("_size", "_dead", "_words", "_limit", "_label", "_signal", "_owner", "_owners", "_owner_ids"):
                setattr(self, name, getattr(other, name))

    def replace_owner(self, owner: str, signals: Sequence[Signal]) -> None:
        """An owner's signals as the store has them now (none: forgotten)."""
        self.remove_owner(owner)
        self.add(signals)

    def remove_owner(self, owner: str) -> None:
        """Forget every signal of an owner (a decision undone or deleted, a bank deleted)."""
        with self._lock:
            found = self._owner_ids.get(owner)
            if found is None or not self._size:
                return
            self._kill((self._owner[: self._size] == found) & (self._limit[: self._size] >= 0))

    def lookup(self, frames: Sequence[FrameHashes]) -> Found:
        """The nearest signals within their distance of the frames' hashes. A frame below the
        minimum quality looks nothing up, and so no safe match can vouch for it."""
        hashable = [frame for frame in frames if frame.quality >= self.min_quality]
        per_frame = [self._frame(frame.original) for frame in hashable]
        if not per_frame:
            return Found()
        vouched = len(hashable) == len(frames)  # every frame could be looked up

        def nearest(matches: Iterable[Match | None]) -> Match | None:
            present = [m for m in matches if m is not None]
            return min(present, key=lambda m: (m.distance, m.signal)) if present else None

        def every(key: tuple[bool, int]) -> Match | None:
            matches = [found.get(key) for found in per_frame]
            return nearest(matches) if vouched and all(m is not None for m in matches) else None

        return Found(
            human_adult=nearest(found.get((False, _ADULT)) for found in per_frame),
            human_safe=every((False, _SAFE)),
            bank_adult=nearest(found.get((True, _ADULT)) for found in per_frame),
            bank_safe=every((True, _SAFE)),
        )

    def _frame(self, pdq: str) -> dict[tuple[bool, int], Match]:
        with self._lock:
            size = self._size
            if size == self._dead:
                return {}
            words, limit = self._words[:, :size], self._limit[:size]
            best = distances(words, pdq)
            hits = np.flatnonzero(best <= limit)  # a dead row's limit is -1
            found: dict[tuple[bool, int], Match] = {}
            for row in hits[np.lexsort((self._signal[hits], best[hits]))]:
                owner = self._owners[self._owner[row]]
                key = (owner.startswith(BANK_PREFIX), int(self._label[row]))
                if key not in found:
                    label = "adult" if key[1] == _ADULT else "safe"
                    found[key] = Match(owner, label, int(best[row]), int(self._signal[row]))
            return found

    def _owner_id(self, owner: str) -> int:
        found = self._owner_ids.get(owner)
        if found is None:
            found = self._owner_ids[owner] = len(self._owners)
            self._owners.append(owner)
        return found

    def _kill(self, rows: np.ndarray) -> None:
        count = int(rows.sum())
        if not count:
            return
        self._limit[: self._size][rows] = -1
        self._dead += count
        if self._dead > 4 * self.GROW and self._dead * 2 > self._size:
            self._compact()

    def _compact(self) -> None:
        keep = np.flatnonzero(self._limit[: self._size] >= 0)
        for name in ("_limit", "_label", "_signal", "_owner"):
            array = getattr(self, name)
            array[: keep.size] = array[keep]
        self._words[:, : keep.size] = self._words[:, keep]
        self._size, self._dead = keep.size, 0

    def _reserve(self, size: int) -> None:
        capacity = self._limit.size
        if size <= capacity:
            return
        capacity = max(size, capacity * 2)
        words = np.zeros((4, capacity), dtype=np.uint64)
        words[:, : self._size] = self._words[:, : self._size]
        self._words = words
        for name in ("_limit", "_label", "_signal", "_owner"):
            old = getattr(self, name)
            new = np.zeros(capacity, dtype=old.dtype)
            new[: self._size] = old[: self._size]
            setattr(self, name, new)
