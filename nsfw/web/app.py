"""The one factory, `create_app`: settings, the worker's service and models, and the Flask app with
its hooks in the order they must run (request id, keys, rate limits, then the API), the review queue
when it is on, the API's description and the error handlers."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping, Sequence

from flask import Flask

from nsfw.config import Settings
from nsfw.fetch import Resolver, system_resolver
from nsfw.imaging.video import sweep_copies
from nsfw.model import Classifier, load_classifiers
from nsfw.pipeline.service import PredictionService, build_service
from nsfw.web import access, compat, landing, limits, observe, openapi, state
from nsfw.web.answers import register_error_handlers
from nsfw.web.api import bp

log = logging.getLogger(__name__)

# gunicorn halts the whole server, instead of respawning forever, when a worker exits with this.
WORKER_BOOT_ERROR = 3


def create_app(
    settings: Settings | None = None,
    classifier: Classifier | Sequence[Classifier] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    resolver: Resolver = system_resolver,
) -> Flask:
    """The one factory: settings (from NSFW_* when not given), the classifiers (every served model,
    loaded and warmed here when not given; the first given is the default), fetcher, blueprint and
    error handlers."""
    if settings is None:
        settings = Settings.from_env(os.environ if environ is None else environ)
    _configure_logging(settings.log_level, settings.log_format)
    service = build_service(settings, resolver)
    sweep_copies()  # video copies a killed worker left (nsfw/imaging/video.py)
    if isinstance(classifier, Sequence):
        service.models.set({c.spec.name: c for c in classifier})
    elif classifier is not None:
        service.models.set_one(classifier)
    elif settings.load_in_background:
        threading.Thread(target=_load_or_exit, args=(service,), name="model-loader", daemon=True).start()
    else:
        service.models.set(load_classifiers(settings))

    # Named for the package, as before the app moved here: its logger is the `nsfw` logger, its root
    # the package's folder. No /static route: nothing of ours is static but /docs.
    app = Flask("nsfw", static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.json.sort_keys = False  # keep the model's class order (which is also alphabetical)
    app.extensions[state.SERVICE] = service
    observe.install(app)  # first: every answer, a refusal too, carries the request's id
    # Before the blueprint's hooks: no body is read for a stranger.
    access.install(app, settings.api_keys, settings.metrics_token, settings.compat_open)
    limits.install(
        app,
        settings.rate_limit,
        settings.instance_dir,
        settings.limits_redis,
        settings.rate_limit_on_error,
    )
    app.register_blueprint(bp)
    app.register_blueprint(landing.bp)
    compat.install(app, settings)  # the platform adapters NSFW_COMPAT turns on
    if settings.review:
        # The store and the queue's code (with the SQL stack) load only when a feature needs them.
        from nsfw import review
        from nsfw.store.shared import open_store

        store = app.extensions[state.STORE] = open_store(settings)
        review.install(app, settings, service, store)
        store.maintenance.start()  # once every feature has registered its duties
    openapi.install(app)
    register_error_handlers(app)
    return app


def _configure_logging(level: str, log_format: str = "text") -> None:
    """The nsfw logger at NSFW_LOG_LEVEL, in NSFW_LOG_FORMAT; to stderr (gunicorn's error log) unless
    the host process configured logging itself. Without a handler, Python would print only warnings
    and above, and the detail of every refused request (kept out of the response) would be lost."""
    logger = logging.getLogger("nsfw")
    logger.setLevel(level)
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.addFilter(observe.RequestIdFilter())
        handler.setFormatter(observe.formatter(log_format))
        logger.addHandler(handler)


def _load_or_exit(service: PredictionService) -> None:
    try:
        service.models.set(load_classifiers(service.settings))
    except BaseException:
        log.critical("model failed to load; stopping the worker", exc_info=True)
        logging.shutdown()
        os._exit(WORKER_BOOT_ERROR)
