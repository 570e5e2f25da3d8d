"""Numbers from text (query parameters, NSFW_* variables): ASCII digits only.

Python's int() and float() also read other scripts' digits ("٠٫٧", full-width "０.７") and spaces and
underscores ("1_000"); a check done on the text and the value used must never disagree, so both
come from the one spelling every HTTP client and shell means.
"""

from __future__ import annotations

import re

_INTEGER = re.compile(r"[+-]?[0-9]+")
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def parse_int(text: str) -> int:
    """An integer in ASCII digits, or ValueError."""
    if not _INTEGER.fullmatch(text):
        raise ValueError(f"{text!r} is not an integer in ASCII digits")
    return int(text)


def parse_float(text: str) -> float:
    """A decimal number in ASCII digits (no nan, inf or underscores), or ValueError."""
    if not _DECIMAL.fullmatch(text):
        raise ValueError(f"{text!r} is not a decimal number in ASCII digits")
    return float(text)
