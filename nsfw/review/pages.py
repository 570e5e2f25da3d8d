"""The moderator's pages: sign in, the queue, history with undo, insights. Server-rendered Jinja2 and
one small plain script (static/review.js), everything served from this package.

- Sessions: Flask's signed cookie (NSFW_SECRET_KEY), HttpOnly, SameSite=Lax, Secure when the request
  came over https (directly, or as a trusted proxy's X-Forwarded-Proto says), holding the moderator's
  name, their session generation and the sign-in time. Each request loads its moderator again and
  checks both: a removed moderator, a signed-out one (everywhere), one with a new password and a
  session older than NSFW_SESSION_HOURS are signed out at the next request.
- CSRF: Flask-WTF's tokens on every form and on every state-changing fetch (`X-CSRFToken`); the API
  routes ask for one only when a session, not a key, authenticates them (nsfw/web/access.py, nsfw/web/routes.py).
- Sign-in: failures limited per name and address, per name and per address, in the rate limits'
  store; a few password checks at once per worker (nsfw/review/signin.py).
- Every page carries a Content-Security-Policy with no inline script, X-Frame-Options: DENY, no-store.
"""

from __future__ import annotations

import calendar
import functools
import hmac
import json
import logging
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode, urlsplit

from flask import (
    Blueprint,
    Flask,
    Response,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.sessions import SecureCookieSessionInterface
from flask_wtf.csrf import CSRFError, CSRFProtect, generate_csrf
from markupsafe import Markup
from sqlalchemy.exc import SQLAlchemyError

from nsfw import errors, metrics
from nsfw.config import Settings
from nsfw.model.specs import MODELS
from nsfw.review import insights as teach
from nsfw.review import moderators, team, wellbeing
from nsfw.review.queue import ReviewQueue, iso
from nsfw.review.search import Filters
from nsfw.review.signin import SignInBusy, SignInGuard
from nsfw.review.views import count_decision
from nsfw.review.wellbeing import Wellbeing
from nsfw.web import access, routes, state
from nsfw.web.answers import error_response
from nsfw.web.limits import redis_options
from nsfw.web.limitstore import storage_uri
from nsfw.web.routes import PAGES_PATH, SESSION_COOKIE

log = logging.getLogger(__name__)

bp = Blueprint("review_pages", __name__, template_folder="templates", static_folder="static", url_prefix=PAGES_PATH)

UNDO_SECONDS = 600
SEARCH_PAGE = 50  # rows a search page shows; the next page is a link
BULK_MAX = 200  # items one bulk decision takes
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
csrf = CSRFProtect()


class _SessionInterface(SecureCookieSessionInterface):
    """Secure cookies exactly when the request came over https."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return access.request_scheme() == "https"


def _queue() -> ReviewQueue:
    queue: ReviewQueue = state.review().queue
    return queue


_SIGNED_IN = ("moderator", "generation", "at")


def moderator() -> str | None:
    """The signed-in moderator of this request, checked against the store: the session's generation
    must be the moderator's (not signed out, no new password, not removed) and the sign-in younger
    than NSFW_SESSION_HOURS; otherwise the session is cleared."""
    if "moderator" not in g:
        g.moderator, g.blur, g.account = None, True, None
        name, generation, at = (session.get(key) for key in _SIGNED_IN)
        settings: Settings = state.service().settings
        fresh = isinstance(at, int | float) and 0 <= time.time() - at < settings.session_hours * 3600
        if isinstance(name, str) and isinstance(generation, str) and fresh:
            found = moderators.session_of(_queue().engine, name)
            if found is not None and hmac.compare_digest(found.generation.encode(), generation.encode()):
                g.moderator, g.blur, g.account = name, found.blur, found
        if g.moderator is None:
            for key in _SIGNED_IN:
                session.pop(key, None)
    return g.moderator  # type: ignore[no-any-return]


def signed_in(view: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if moderator() is None:
            return redirect(url_for("review_pages.login", next=request.full_path.rstrip("?")))
        return view(*args, **kwargs)

    return wrapped


def _safe_next(target: str | None) -> str:
    """Only our own pages: a sign-in must never redirect elsewhere."""
    if target and target.startswith(PAGES_PATH) and not urlsplit(target).netloc and "\\" not in target:
        return target
    return url_for("review_pages.queue")


def _guard() -> SignInGuard:
    guard: SignInGuard = state.signin()
    return guard


def _make_guard(settings: Settings) -> SignInGuard:
    """The worker's one sign-in guard, made at install (made lazily, concurrent first sign-ins each
    made their own, and with it their own bound on the checks at once)."""
    redis = settings.limits_redis
    return SignInGuard(
        storage_uri(redis, settings.instance_dir),
        redis_options() if redis else {},
        fail_closed=settings.rate_limit_on_error == "closed",
    )


def _message(message: str, status: int, headers: dict[str, str] | None = None) -> Any:
    return render_template("review/message.html", message=message), status, headers or {}


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    error = None
    status = 200
    if request.method == "POST":
        csrf.protect()
        name = request.form.get("username", "")[:64]
        address = access.client_address()
        guard = _guard()
        try:
            if not guard.allowed(name, address):
                error, status = "Too many wrong passwords from here; wait a minute.", 429
            else:
                with guard.checking():
                    generation = moderators.verify(_queue().engine, name, request.form.get("password", ""))
                if generation is not None:
                    session.clear()
                    session.update(moderator=name, generation=generation, at=time.time())
                    session.permanent = False
                    return redirect(_safe_next(request.args.get("next")))
                guard.failed(name, address)
                error, status = "Wrong name or password.", 401
        except SignInBusy:
            return _message("Many sign-ins at once; try again in a moment.", 503, {"Retry-After": "1"})
        except errors.RateLimitUnavailable as refused:
            log.warning("sign-in refused: %s", refused.detail)
            return _message("Sign-in is unavailable for a moment; try again shortly.", 503, {"Retry-After": "5"})
    # After a wrong password the name stays (only the password is typed again).
    name = request.form.get("username", "")[:64] if request.method == "POST" else ""
    return render_template("review/login.html", error=error, name=name, next=request.args.get("next", "")), status


@bp.post("/logout")
def logout() -> Any:
    """Sign out everywhere: this moderator's sessions on every device end (their generation changes)."""
    csrf.protect()
    name = moderator()
    session.clear()
    if name is not None:
        try:
            _queue().release_all(name)  # the items this moderator held are open to the others at once
            moderators.end_sessions(_queue().engine, name)
        except SQLAlchemyError as exc:
            metrics.REVIEW_STORE_ERRORS.labels("logout").inc()
            log.warning("sign-out of %s: the store failed (%s); this browser is signed out", name, type(exc).__name__)
            return _message(
                "Signed out in this browser. The store did not answer, so your sessions elsewhere last until "
                "they expire: sign out again in a moment to end them.",
                503,
                {"Retry-After": "5"},
            )
    return redirect(url_for("review_pages.login"))


def _settings() -> Settings:
    settings: Settings = state.service().settings
    return settings


def _account() -> moderators.Account | None:
    account: moderators.Account | None = g.get("account")
    return account


def looks() -> Wellbeing:
    """This moderator's wellbeing settings: the operator's defaults with their own over them."""
    defaults = Wellbeing.defaults(_settings())
    account = _account()
    return defaults.over(account.wellbeing) if account else defaults


def _body_classes() -> str:
    """The page's classes for what it shows before a reveal (review.css)."""
    chosen = looks()
    classes = [chosen.blur_class]
    if not g.get("blur", True):
        classes.append("no-blur")
    classes += [
        name
        for name, on in (
            ("greyscale", chosen.greyscale),
            ("hide-scores", chosen.hide_scores),
            ("hold-to-peek", chosen.hold_to_peek),
        )
        if on
    ]
    return " ".join(classes)


def _queue_page(view: str) -> str:
    settings = _settings()
    return render_template(
        "review/queue.html",
        total=_queue().count("pending", view == "leads"),
        lease=settings.review_lease,
        reasons=settings.review_reasons,
        view=view,
        wellbeing=looks(),
        page=view,
    )


@bp.get("")
@signed_in
def queue() -> str:
    """The moderators' queue: every pending item but the escalated ones."""
    return _queue_page("queue")


@bp.get("/leads")
@signed_in
def leads() -> Any:
    """The leads' view: the escalated items, for leads to decide."""
    if not is_lead():
        return _message("The leads' view is for leads; a lead or the operator can make you one.", 403)
    return _queue_page("leads")


@bp.route("/settings", methods=["GET", "POST"])
@signed_in
def settings_page() -> Any:
    """This moderator's own wellbeing settings over the team's defaults."""
    account = _account()
    error, status = None, 200
    if request.method == "POST":
        csrf.protect()
        try:
            own = wellbeing.parse_form(request.form)
        except ValueError as exc:
            error, status = str(exc), 400
        else:
            engine = _queue().engine
            moderators.set_blur(engine, str(moderator()), request.form.get("blur") == "on")
            moderators.set_wellbeing(engine, str(moderator()), own)
            return redirect(url_for("review_pages.settings_page", saved=1))
    return (
        render_template(
            "review/settings.html",
            page="settings",
            chosen=looks(),
            team=Wellbeing.defaults(_settings()),
            own=account.wellbeing if account else {},
            steps=wellbeing.BLUR_STEPS,
            error=error,
            saved=request.args.get("saved") == "1",
        ),
        status,
    )


@bp.post("/items/<review_id>/reveal")
@signed_in
def reveal(review_id: str) -> Response:
    """The page revealed an item's picture: counted, and this moderator's exposure answered (the page
    suggests a break at a limit)."""
    csrf.protect()
    _queue().revealed(review_id, str(moderator()))
    at = session.get("at")
    signed_in_at = float(at) if isinstance(at, int | float) else time.time()
    found = wellbeing.exposure(_queue().engine, str(moderator()), signed_in_at, looks())
    return jsonify(found.to_dict())


@bp.get("/history")
@signed_in
def history() -> str:
    items = _queue().recent_decisions(100)
    now = time.time()
    lead = is_lead()
    for item in items:
        item["undoable"] = _decided_at(item) > now - UNDO_SECONDS and (lead or item["decided_by"] == moderator())
    return render_template("review/history.html", items=items, page="history", undo_minutes=UNDO_SECONDS // 60)


@bp.post("/history/<review_id>/undo")
@signed_in
def undo(review_id: str) -> Any:
    """Undo a decision, with a reason (kept in the item's history); another's decision only by a lead."""
    csrf.protect()
    reason = request.form.get("reason", "").strip()
    if not reason:
        return _message("An undo needs a reason; go back and say why.", 400)
    item = _queue().get(review_id)  # none: the blueprint's 404 page (_not_found)
    if item["status"] != "decided" or _decided_at(item) <= time.time() - UNDO_SECONDS:
        return _message("That decision can no longer be undone.", 409)
    try:
        _queue().revert(review_id, str(moderator()), reason, lead=is_lead())
    except errors.LeadOnly:
        return _message("Only a lead may undo another moderator's decision.", 403)
    except errors.NsfwError as exc:  # undone meanwhile, the image pending again as another item, ...
        return _message(f"That decision cannot be undone now: {exc.message}", exc.status)
    state.review().wake.set()
    return redirect(url_for("review_pages.queue"))


@bp.get("/items/<review_id>")
@signed_in
def item_page(review_id: str) -> Any:
    """One item: its picture, where it came from, what the model said, its frames, its decision or
    appeal, and its whole history (claims, reveals, decisions, undos, appeals, webhook deliveries)."""
    queue = _queue()
    item = queue.get(review_id)  # none: the blueprint's 404 page (_not_found)
    return render_template(
        "review/item.html",
        item=item,
        history=queue.audit_log(review_id),
        deliveries=queue.deliveries(review_id=review_id),
        page="search",
        wellbeing=looks(),
    )


@bp.get("/search")
@signed_in
def search_page() -> Any:
    """Items by ref, status, label, kind, moderator, day range and adult score range, newest first,
    a page at a time."""
    error = None
    try:
        filters = Filters.parse(request.args)
    except ValueError as exc:
        filters, error = Filters(), str(exc)
    cursor = request.args.get("cursor") or None
    try:
        items, following = _queue().search(filters.condition(), SEARCH_PAGE, cursor)
    except errors.BadRequest:
        items, following, error = [], None, "That page link is broken; search again."
    return render_template(
        "review/search.html",
        filters=filters,
        items=items,
        following=following,
        args=filters.query_args(),
        error=error,
        reasons=_settings().review_reasons,
        done=request.args.get("done"),
        page="search",
    ), (400 if error else 200)


@bp.post("/search/decide")
@signed_in
def bulk_decide() -> Any:
    """Decide the selected items with one label and reason, each by itself: audited item by item, each
    with its own webhook. Left, and counted: those this moderator has not revealed (a decision needs a
    look, here as in the queue); those another moderator holds, already decided,
    escalated (for a moderator) or contesting this moderator's own decision. A store that fails midway
    stops the rest, and the page says how far it got."""
    csrf.protect()
    ids = list(dict.fromkeys(request.form.getlist("id")))[:BULK_MAX]
    label = request.form.get("label", "")
    code = request.form.get("reason", "") or None
    note = request.form.get("note", "") or None
    if label not in ("adult", "safe") or not ids:
        return _message("Choose items and a label (adult or safe).", 400)
    queue, name = _queue(), str(moderator())
    looked = queue.revealed_by(name, ids)  # the search page blurs its thumbnails for everyone until a click
    counts = {"decided": 0, "left": 0, "unseen": 0, "failed": 0}
    for at, review_id in enumerate(ids):
        if review_id not in looked:
            counts["unseen"] += 1
            continue
        try:
            made = queue.decide(review_id, name, label, note, code, lead=is_lead())
        except errors.InvalidLabel as exc:
            return _message(f"Not decided: {exc.detail}", 400)
        except (errors.Claimed, errors.AlreadyDecided, errors.NotFound, errors.LeadOnly, errors.SameModerator):
            counts["left"] += 1
            continue
        except SQLAlchemyError as exc:
            metrics.REVIEW_STORE_ERRORS.labels("pages").inc()
            log.warning("bulk decision: the store failed after %d items: %s", counts["decided"], str(exc)[:300])
            counts["failed"] = len(ids) - at
            break
        counts["decided"] += 1
        count_decision(made)
    state.review().wake.set()
    back = request.form.get("back", "")
    ours = back.startswith(PAGES_PATH + "/search") and "\\" not in back and "//" not in back
    target = back if ours else url_for("review_pages.search_page")
    joiner = "&" if "?" in target else "?"
    return redirect(f"{target}{joiner}{urlencode({'done': '-'.join(str(n) for n in counts.values())})}")


@bp.get("/team")
@signed_in
def team_page() -> str:
    """The queue's depth and age, decisions per moderator per day, waits and agreement."""
    depth, oldest = _queue().depth()
    return render_template(
        "review/team.html",
        depth=depth,
        oldest=oldest,
        team=team.team(_queue().engine),
        roles=moderators.roles(_queue().engine),
        page="team",
    )


def _epoch(stamp: str | None) -> float:
    """queue.iso's UTC stamps back to epoch seconds (to the second)."""
    return float(calendar.timegm(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S"))) if stamp else 0.0


def _decided_at(item: dict[str, Any]) -> float:
    return _epoch(item.get("decided"))


@bp.get("/insights")
@signed_in
def insights() -> str:
    settings: Settings = state.service().settings
    decided = _queue().decided_scores()
    learned = teach.learn(decided)
    kinds = _queue().kinds_decided()
    return render_template(
        "review/insights.html",
        learned=learned,
        chart=Markup(teach.histogram_svg(learned)),  # noqa: S704 - numbers only, made by histogram_svg
        kinds=kinds,
        current=(settings.adult_threshold, settings.safe_threshold),
        page="insights",
        **_adapter_context(settings),
    )


def _adapter_context(settings: Settings) -> dict[str, Any]:
    """The served model's adapter versions (newest first, with their report cards) and their history."""
    spec = MODELS[settings.model]
    adapters = state.adapters()
    training = adapters.training_state(spec.name)
    return {
        "adapter_model": spec.name,
        "adapter_versions": adapters.versions(spec.name),
        "adapter_history": adapters.history(20),
        "adapter_override": settings.adapter_override,
        "adapter_training": training["running"],
        "adapter_failed": training["failed"],
    }


@bp.post("/insights/adapter")
@signed_in
def adapter_action() -> Any:
    """A lead trains, promotes or demotes the served model's adapter (each step audited under their name)."""
    csrf.protect()
    if not is_lead():
        return _message("Only a lead may train, promote or demote the adapter.", 403)
    spec = MODELS[state.service().settings.model]
    adapters = state.adapters()
    actor = str(moderator() or "operator")
    action = request.form.get("action", "")
    try:
        if action == "train":
            if not state.adapter_trainer().start(spec.name, spec.version, actor):
                return _message("A training is running already; its version appears on the insights page.", 409)
        elif action == "promote":
            raw = request.form.get("version", "")
            if raw and not (raw.isascii() and raw.isdigit() and len(raw) < 10):
                return _message("A version is a number.", 400)  # never "the newest" by mistake
            adapters.promote(spec.name, spec.version, actor, int(raw) if raw else None)
        elif action == "demote":
            adapters.demote(spec.name, actor)
        else:
            return _message("Train, promote or demote: nothing else.", 400)
    except errors.NsfwError as exc:
        return _message(f"The adapter was not changed: {exc.message}", exc.status)
    return redirect(url_for("review_pages.insights") + "#adapter")


def _adult_classes_json() -> str:
    """Each model's adult classes, for the page's script (its score bars and its plain reason line)."""
    return json.dumps({name: list(spec.adult_classes) for name, spec in MODELS.items()})


def ref_text(ref: dict[str, str]) -> str:
    """A ref as the page shows it: the client's reference and the key that sent it."""
    return f"{ref['ref']} ({ref['key']})"


def animation_note(item: dict[str, Any]) -> str:
    """What a moderator must know of an animation or a video before deciding: the picture is one
    frame of many (a video's, sampled: said with its time)."""
    frames = item["frames"]
    if frames.get("video"):
        decided = next((f for f in frames["classified"] if f["index"] == frames["chosen"]), None)
        at = frame_name(item, decided).removeprefix("Frame ") if decided else "?"
        return (
            f"Video: {len(frames['classified'])} sampled frames judged. The picture is the frame {at}, the one "
            "that decided the verdict; check every frame below before deciding."
        )
    return (
        f"Animation: {frames['count']} frames, {len(frames['classified'])} classified. The picture is frame "
        f"{frames['chosen']}, the one that decided the verdict; check every frame below before deciding."
    )


def frame_name(item: dict[str, Any], frame: dict[str, Any]) -> str:
    """A classified frame as the page names it: an animation's by its index, a video's by its time."""
    if item["frames"].get("video"):
        time_s = frame.get("time_s")
        return "Frame at ?" if time_s is None else f"Frame at {time_s:.1f} s"
    return f"Frame {frame['index']}"


@bp.app_template_filter("age")
def _age(stamp: str | None) -> str:
    if not stamp:
        return "-"
    seconds = max(0, int(time.time() - _epoch(stamp)))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def _headers(response: Response) -> Response:
    if routes.route_for(request.path).page:
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "same-origin"
        response.headers.setdefault("Cache-Control", "no-store")
    return response


@bp.url_value_preprocessor
def _no_nul(endpoint: str | None, values: dict[str, Any] | None) -> None:
    """An id with a NUL names no item (PostgreSQL's text refuses the character: it must not reach the
    store and read as the store failing)."""
    if any("\x00" in str(value) for value in (values or {}).values()):
        raise errors.NotFound("no such item")


@bp.errorhandler(errors.NotFound)
def _not_found(exc: errors.NotFound) -> Any:
    """An item the pages name that is not there (deleted, past retention, a NUL in its id): a page."""
    return _message("No such item (deleted, or past retention).", 404)


@bp.errorhandler(SQLAlchemyError)
def _store_failed(exc: SQLAlchemyError) -> Any:
    """A failing store is a page that says so (503, Retry-After), never a 500; logged and counted."""
    metrics.REVIEW_STORE_ERRORS.labels("pages").inc()
    log.warning("%s %s -> 503: the review store failed: %s", request.method, request.path, str(exc)[:300])
    return _message("The review store is not answering; try again in a moment.", 503, {"Retry-After": "5"})


def _csrf_failed(error: CSRFError) -> Any:
    if routes.route_for(request.path).session:  # the review API: the API's error shape
        return error_response(errors.Forbidden(f"CSRF: {error.description}"), "The CSRF token is missing or wrong.")
    return _message("The form expired; go back and try again.", 400)


def session_moderator() -> str | None:
    """For nsfw/web/access.py: the moderator a session cookie signs in for the review API, with the
    CSRF token checked on anything that changes state."""
    name = moderator()
    if name is not None and request.method not in ("GET", "HEAD", "OPTIONS"):
        csrf.protect()
    return name


def is_lead() -> bool:
    """Whether this request acts with a lead's rights: a key with the review scope (the operator's
    tool) does; a signed-in moderator does when their role is lead."""
    account: moderators.Account | None = g.get("account")
    return account is None or account.lead


def install(app: Flask, settings: Settings) -> None:
    app.secret_key = settings.secret_key
    app.session_interface = _SessionInterface()
    app.config.update(
        SESSION_COOKIE_NAME=SESSION_COOKIE,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        WTF_CSRF_CHECK_DEFAULT=False,  # the API's key holders send no token; sessions do (above)
        WTF_CSRF_TIME_LIMIT=None,  # valid as long as the session
        WTF_CSRF_SSL_STRICT=False,  # the Referer check breaks behind proxies that rewrite it; SameSite covers it
        # The signature's own age limit too (the session's sign-in time is checked on every request).
        PERMANENT_SESSION_LIFETIME=timedelta(hours=settings.session_hours),
    )
    csrf.init_app(app)
    app.jinja_env.globals["csrf_token"] = generate_csrf
    app.jinja_env.globals["moderator"] = lambda: g.get("moderator")
    app.jinja_env.globals["blur"] = lambda: g.get("blur", True)
    app.jinja_env.globals["body_classes"] = _body_classes
    app.jinja_env.globals["is_lead"] = is_lead
    app.jinja_env.filters["iso"] = iso
    app.jinja_env.filters["ref_text"] = ref_text
    app.jinja_env.globals["animation_note"] = animation_note
    app.jinja_env.globals["adult_classes_json"] = _adult_classes_json
    app.jinja_env.globals["adult_classes"] = lambda model: MODELS[model].adult_classes if model in MODELS else ()
    app.jinja_env.filters["host"] = lambda url: urlsplit(url).netloc or url
    app.jinja_env.globals["frame_name"] = frame_name
    app.register_error_handler(CSRFError, _csrf_failed)
    app.after_request(_headers)
    app.register_blueprint(bp)
    state.edge(app).session_moderator = session_moderator
    app.extensions[state.SIGNIN] = _make_guard(settings)
