"""Fair shares: a total, a cap per caller, waiting with a deadline, and nothing released twice."""

from __future__ import annotations

import threading
import time

import pytest

from nsfw.slots import FairSlots


def test_a_caller_gets_its_share_and_the_others_the_rest() -> None:
    slots = FairSlots(total=4, per_caller=2)
    assert slots.try_acquire("a") and slots.try_acquire("a")
    assert not slots.try_acquire("a")  # a's share is full
    assert slots.try_acquire("b") and slots.try_acquire("c")
    assert not slots.try_acquire("d") and slots.in_use == 4  # the total is full
    slots.release("a")
    assert slots.try_acquire("d") and not slots.try_acquire("a")


def test_waiting_for_a_slot_ends_when_one_is_released_or_at_the_deadline() -> None:
    slots = FairSlots(total=1, per_caller=1)
    assert slots.try_acquire("a")
    threading.Timer(0.05, slots.release, args=("a",)).start()
    assert slots.try_acquire("b", timeout=5)
    started = time.monotonic()
    assert not slots.try_acquire("c", timeout=0.05)
    assert time.monotonic() - started >= 0.05


def test_holding_refuses_with_the_given_error_and_always_releases() -> None:
    slots = FairSlots(total=1, per_caller=1)
    with pytest.raises(KeyError):
        with slots.holding("a", 0, LookupError("x")):
            raise KeyError("inside")
    assert slots.in_use == 0
    with slots.holding("a", 0, LookupError("x")), pytest.raises(LookupError):
        with slots.holding("a", 0, LookupError("full")):
            pass


def test_a_release_without_a_slot_is_a_bug() -> None:
    slots = FairSlots(total=2, per_caller=1)
    with pytest.raises(RuntimeError):
        slots.release("nobody")
    with pytest.raises(ValueError):
        FairSlots(total=2, per_caller=3)


def test_a_host_that_holds_no_slot_gets_a_spare_one() -> None:
    """Finding 18 of issue 22: a caller's slow host may fill its share; the caller's other hosts get
    a spare slot each (one at a time), and a caller of one host keeps its whole share."""
    slots = FairSlots(total=8, per_caller=3, spare_per_caller=1, spare=2)
    assert all(slots.try_acquire("a", group="slow") for _ in range(3))  # its whole share
    assert not slots.try_acquire("a", group="slow")  # the slow host has had it
    assert slots.try_acquire("a", group="fast")  # a host holding none: the spare slot
    assert not slots.try_acquire("a", group="fast") and not slots.try_acquire("a", group="other")  # one spare
    slots.release("a", group="fast")
    assert slots.try_acquire("a", group="other")
    # The worker's spares, the same way: a full worker still lets a host that holds none through.
    assert all(slots.try_acquire(caller, group="slow") for caller in ("b", "b", "c", "c"))
    assert slots.in_use == 8
    assert not slots.try_acquire("d", group="slow")  # the slow host holds slots: no spare for it
    assert slots.try_acquire("d", group="cdn") and slots.try_acquire("e", group="img")
    assert not slots.try_acquire("f", group="new")  # the worker's spares are used up
    assert not slots.try_acquire("g")  # without a group, no spare ever
    with pytest.raises(RuntimeError):
        slots.release("a", group="never")
