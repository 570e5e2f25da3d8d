"""gunicorn settings for every deployment (Procfile, .do/app.yaml, Dockerfile): `gunicorn app:app`."""

import os
import sys
from typing import Any

# PORT and WEB_CONCURRENCY are the platform's (DigitalOcean, Heroku, Docker); NSFW_* are the app's.
bind = f"0.0.0.0:{os.environ.get('PORT', '8080')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# Threads let /health (and fetches, which wait on the network) run while another thread predicts;
# the worker decodes and infers one image at a time. NSFW_MAX_IN_FLIGHT (default 4) predictions may
# be admitted at once; the other threads answer /health and the fast 503s, never stuck behind them.
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", "8"))
# Above the slowest measured model load (TensorFlow backend: up to ~19 s on one core) and the
# longest request (a 10 s download deadline plus decoding); never 0.
timeout = 60
graceful_timeout = 30
keepalive = 5
# Heartbeat files on tmpfs: a slow disk must not make the arbiter think a worker hung.
worker_tmp_dir = "/dev/shm"
# Each worker imports the app and loads its own model: TensorFlow is not fork-safe.
preload_app = False
accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOG_LEVEL", "info")


# gunicorn's exit code for a worker that failed to boot: the arbiter stops instead of respawning.
WORKER_BOOT_ERROR = 3


def post_worker_init(worker: Any) -> None:
    """Refuse to serve when the admission limit leaves no thread free for /health."""
    max_in_flight = worker.wsgi.extensions["nsfw"].settings.max_in_flight
    if max_in_flight >= worker.cfg.threads:
        worker.log.error(
            "NSFW_MAX_IN_FLIGHT=%d needs more gunicorn threads than %d (GUNICORN_THREADS)",
            max_in_flight,
            worker.cfg.threads,
        )
        sys.exit(WORKER_BOOT_ERROR)
