"""What the app keeps for its requests in Flask's `app.extensions`, each under a name defined once
here and read through a typed function, so that a reader finds who sets what and who reads it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from flask import Flask, current_app

if TYPE_CHECKING:
    from flask_limiter import Limiter

    from nsfw.matching.banks import Matcher
    from nsfw.pipeline.service import PredictionService
    from nsfw.review import ReviewDuties
    from nsfw.review.adapters import Adapters, Trainer
    from nsfw.review.signin import SignInGuard
    from nsfw.store.shared import Store

SERVICE = "nsfw"  # the worker's PredictionService (create_app)
STORE = "nsfw.store"  # the worker's store, when a feature keeps state (nsfw/store/shared.py Store)
REVIEW = "nsfw.review"  # the review queue's room in this worker (nsfw/review/__init__.py install)
ADAPTERS = "nsfw.adapters"  # the adapters' store (nsfw/review/adapters.py Adapters, set by review install)
ADAPTER_TRAINER = "nsfw.adapters.trainer"  # the page's training thread (nsfw/review/adapters.py Trainer)
MATCHER = "nsfw.matcher"  # the near-duplicate matcher's room (nsfw/matching/banks.py Matcher, set by review install)
EDGE = "nsfw.edge"  # the web layer's wiring (Edge)
SIGNIN = "nsfw.signin"  # the moderators' sign-in limits (nsfw/review/signin.py SignInGuard, set by pages.py)


@dataclass
class Edge:
    """The web layer's own wiring, filled by create_app and what it installs."""

    # The moderator a session cookie signs in for the review API (nsfw/review/pages.py, when the queue
    # is on); None: sessions sign nobody in.
    session_moderator: Callable[[], str | None] | None = None
    # Flask-Limiter, when NSFW_RATE_LIMIT is set (nsfw/web/limits.py), and whether a failing counter
    # store closes the limited routes (NSFW_RATE_LIMIT_ON_ERROR=closed).
    limiter: Limiter | None = None
    limits_closed: bool = False


def _app(app: Flask | None) -> Flask:
    return current_app if app is None else app  # type: ignore[return-value]


def service(app: Flask | None = None) -> PredictionService:
    found: PredictionService = _app(app).extensions[SERVICE]
    return found


def edge(app: Flask | None = None) -> Edge:
    extensions = _app(app).extensions
    if EDGE not in extensions:
        extensions[EDGE] = Edge()
    found: Edge = extensions[EDGE]
    return found


def signin(app: Flask | None = None) -> SignInGuard:
    """The guard the review pages check sign-ins with."""
    found: SignInGuard = _app(app).extensions[SIGNIN]
    return found


def review(app: Flask | None = None) -> ReviewDuties:
    """The review queue's room in this worker (its queue, its maintenance's wake); only its own views
    and pages ask, and they exist only with the queue on."""
    found: ReviewDuties = _app(app).extensions[REVIEW]
    return found


def store(app: Flask | None = None) -> Store | None:
    """The worker's store, or None when no feature that keeps state is on."""
    found: Store | None = _app(app).extensions.get(STORE)
    return found


def matcher(app: Flask | None = None) -> Matcher:
    """The matcher's room in this worker (its index, banks); only its own views ask."""
    found: Matcher = _app(app).extensions[MATCHER]
    return found


def adapters(app: Flask | None = None) -> Adapters:
    """The adapters' room in this worker (training, versions, promotion); only the review's pages ask."""
    found: Adapters = _app(app).extensions[ADAPTERS]
    return found


def adapter_trainer(app: Flask | None = None) -> Trainer:
    """The insights page's training thread in this worker."""
    found: Trainer = _app(app).extensions[ADAPTER_TRAINER]
    return found
