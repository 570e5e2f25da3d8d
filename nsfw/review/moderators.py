"""Moderators: who may sign in to the review pages, and whose sessions still hold. No Flask.

Passwords are hashed with Argon2id (argon2-cffi: salted, parameters in the encoding), with OWASP's
first recommended setting (m = 19 MiB, t = 2, p = 1; Password Storage Cheat Sheet) instead of the
library's default 64 MiB: every check, the dummy one for an unknown name too, takes that memory,
and a 1 GB box must survive a burst of sign-ins (pages.py also bounds the checks at once). A hash
made with other parameters is rehashed at its next successful sign-in.

Each moderator has a session generation, a random token every session cookie carries: signing out,
a new password and removal change it, which ends every session made before, on every device.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Engine, delete, insert, select, update

from nsfw.review.tables import moderators

NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MODERATOR, LEAD = "moderator", "lead"
ROLES = (MODERATOR, LEAD)
MIN_PASSWORD = 10
# OWASP: "m=19456 (19 MiB), t=2, p=1" for Argon2id.
_hasher = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)
# Compared against when the name is unknown, so that a wrong name costs what a wrong password does.
_DUMMY = _hasher.hash("not a password of anyone's")


def check_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise ValueError("a moderator's name is 1-64 of A-Z a-z 0-9 _ . -")
    return name


def add(engine: Engine, name: str, password: str) -> None:
    """A new moderator, or a new password for one (ValueError on a bad name or a short password)."""
    check_name(name)
    if len(password) < MIN_PASSWORD:
        raise ValueError(f"the password needs at least {MIN_PASSWORD} characters")
    digest = _hasher.hash(password)
    with engine.begin() as connection:
        known = connection.execute(select(moderators.c.name).where(moderators.c.name == name)).first()
        if known:  # a new password: every session made with the old one ends
            connection.execute(
                update(moderators)
                .where(moderators.c.name == name)
                .values(password_hash=digest, generation=_new_generation())
            )
        else:
            connection.execute(
                insert(moderators).values(
                    name=name, password_hash=digest, created=time.time(), generation=_new_generation()
                )
            )


def _new_generation() -> str:
    return secrets.token_hex(16)


def end_sessions(engine: Engine, name: str) -> None:
    """Sign this moderator out everywhere: the sessions made before now no longer hold."""
    with engine.begin() as connection:
        connection.execute(update(moderators).where(moderators.c.name == name).values(generation=_new_generation()))


def remove(engine: Engine, name: str) -> bool:
    with engine.begin() as connection:
        return bool(connection.execute(delete(moderators).where(moderators.c.name == name)).rowcount)


def names(engine: Engine) -> list[str]:
    with engine.connect() as connection:
        return list(connection.execute(select(moderators.c.name).order_by(moderators.c.name)).scalars())


@dataclass(frozen=True)
class Account:
    """What each signed-in request needs of its moderator: whether their pictures start blurred,
    their session generation, their role and their own wellbeing settings (over the operator's)."""

    blur: bool
    generation: str
    role: str
    wellbeing: dict[str, Any]

    @property
    def lead(self) -> bool:
        return self.role == LEAD


def session_of(engine: Engine, name: str) -> Account | None:
    """The moderator's account; None when there is no such moderator."""
    with engine.connect() as connection:
        row = connection.execute(
            select(moderators.c.blur, moderators.c.generation, moderators.c.role, moderators.c.wellbeing).where(
                moderators.c.name == name
            )
        ).first()
    if row is None:
        return None
    return Account(bool(row.blur), str(row.generation), str(row.role), _wellbeing(row.wellbeing))


def _wellbeing(raw: str | None) -> dict[str, Any]:
    try:
        found = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


def set_role(engine: Engine, name: str, role: str) -> bool:
    """A moderator's role (moderator or lead); False when there is no such moderator."""
    if role not in ROLES:
        raise ValueError(f"a role is one of {', '.join(ROLES)}")
    with engine.begin() as connection:
        return bool(connection.execute(update(moderators).where(moderators.c.name == name).values(role=role)).rowcount)


def roles(engine: Engine) -> dict[str, str]:
    with engine.connect() as connection:
        return {row.name: row.role for row in connection.execute(select(moderators.c.name, moderators.c.role))}


def set_wellbeing(engine: Engine, name: str, values: dict[str, Any]) -> None:
    """The moderator's own wellbeing settings (checked by nsfw/review/wellbeing.py before)."""
    with engine.begin() as connection:
        connection.execute(
            update(moderators).where(moderators.c.name == name).values(wellbeing=json.dumps(values, sort_keys=True))
        )


def set_blur(engine: Engine, name: str, blur: bool) -> None:
    with engine.begin() as connection:
        connection.execute(update(moderators).where(moderators.c.name == name).values(blur=blur))


def verify(engine: Engine, name: str, password: str) -> str | None:
    """The moderator's session generation when name signs in with password, else None; as slow for
    an unknown name as for a wrong password."""
    with engine.connect() as connection:
        row = connection.execute(
            select(moderators.c.password_hash, moderators.c.generation).where(moderators.c.name == name)
        ).first()
    digest = row.password_hash if row else _DUMMY
    try:
        _hasher.verify(digest, password)
    except (VerificationError, InvalidHashError):
        return None
    if row is None:
        return None
    if _hasher.check_needs_rehash(digest):
        with engine.begin() as connection:
            connection.execute(
                update(moderators).where(moderators.c.name == name).values(password_hash=_hasher.hash(password))
            )
    return str(row.generation)
