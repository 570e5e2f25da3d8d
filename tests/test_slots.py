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


def test_one_group_takes_only_part_of_a_callers_share_and_of_the_total() -> None:
    """Finding 18 of issue 22: a caller's slow upstream host may hold only part of its slots."""
    slots = FairSlots(total=8, per_caller=4, per_caller_group=2, per_group=3)
    assert slots.try_acquire("a", group="slow") and slots.try_acquire("a", group="slow")
    assert not slots.try_acquire("a", group="slow")  # a's share of that host is full...
    assert slots.try_acquire("a", group="fast") and slots.try_acquire("a", group="other")  # ...its others flow
    assert not slots.try_acquire("a", group="fast")  # a's whole share is full
    assert slots.try_acquire("b", group="slow") and not slots.try_acquire("c", group="slow")  # the host's total
    slots.release("a", group="slow")
    assert slots.try_acquire("c", group="slow")
    with pytest.raises(RuntimeError):
        slots.release("a", group="never")
