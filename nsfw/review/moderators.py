"""Moderators: who may sign in to the review pages. Passwords are hashed with Argon2id
(argon2-cffi's defaults: memory-hard, salted, parameters in the encoding, rehashed on login when
the defaults change). No Flask."""

from __future__ import annotations

import re
import time

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Engine, delete, insert, select, update

from nsfw.review.store import moderators

NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MIN_PASSWORD = 10
_hasher = PasswordHasher()
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
        if known:
            connection.execute(update(moderators).where(moderators.c.name == name).values(password_hash=digest))
        else:
            connection.execute(insert(moderators).values(name=name, password_hash=digest, created=time.time()))


def remove(engine: Engine, name: str) -> bool:
    with engine.begin() as connection:
        return bool(connection.execute(delete(moderators).where(moderators.c.name == name)).rowcount)


def names(engine: Engine) -> list[str]:
    with engine.connect() as connection:
        return list(connection.execute(select(moderators.c.name).order_by(moderators.c.name)).scalars())


def blurs(engine: Engine, name: str) -> bool | None:
    """Whether this moderator's thumbnails start blurred; None when there is no such moderator."""
    with engine.connect() as connection:
        row = connection.execute(select(moderators.c.blur).where(moderators.c.name == name)).first()
    return None if row is None else bool(row.blur)


def set_blur(engine: Engine, name: str, blur: bool) -> None:
    with engine.begin() as connection:
        connection.execute(update(moderators).where(moderators.c.name == name).values(blur=blur))


def verify(engine: Engine, name: str, password: str) -> bool:
    """Whether name signs in with password; as slow for an unknown name as for a wrong password."""
    with engine.connect() as connection:
        row = connection.execute(select(moderators.c.password_hash).where(moderators.c.name == name)).first()
    digest = row.password_hash if row else _DUMMY
    try:
        _hasher.verify(digest, password)
    except (VerificationError, InvalidHashError):
        return False
    if row is None:
        return False
    if _hasher.check_needs_rehash(digest):
        with engine.begin() as connection:
            connection.execute(
                update(moderators).where(moderators.c.name == name).values(password_hash=_hasher.hash(password))
            )
    return True
