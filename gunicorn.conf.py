"""gunicorn settings for every deployment (Procfile, .do/app.yaml, Dockerfile): `gunicorn app:app`."""

import ctypes
import ctypes.util
import os
import sys
from typing import Any

# PORT and WEB_CONCURRENCY are the platform's (DigitalOcean, Heroku, Docker); NSFW_* are the app's.
bind = f"0.0.0.0:{os.environ.get('PORT', '8080')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# nsfw/web/frontend.py: gunicorn's asyncio worker reads every request whole (headers within `keepalive`
# seconds, body within NSFW_BODY_TIMEOUT, spooled to disk past 1 MiB) and admits it before its body
# (NSFW_MAX_QUEUE per worker) before a thread of the Flask app sees it, so slow clients cost sockets,
# not threads. `threads` is that app's pool: downloads wait on the network there while the model
# runs one image at a time; /health has two threads of its own.
worker_class = "nsfw.web.frontend.Worker"
threads = int(os.environ.get("GUNICORN_THREADS", "32"))
# Open connections per worker (idle keep-alive ones included); each costs a socket, not a thread.
worker_connections = 1000
# Above the slowest measured model load (TensorFlow backend: up to ~19 s on one core) and the
# longest request (a 10 s download deadline plus decoding); never 0.
timeout = 60
graceful_timeout = 30
keepalive = 5
# Heartbeat files on tmpfs: a slow disk must not make the arbiter think a worker hung.
worker_tmp_dir = "/dev/shm"
# Each worker imports the app and loads its own model: TensorFlow is not fork-safe.
preload_app = False
# The request line may be 8190 bytes (gunicorn's most; its default 4094 refused a 2,048-character URL
# once percent-encoded, 3 bytes a character): longer is 414, in our JSON shape (nsfw/web/frontend.py).
limit_request_line = 8190
accesslog = "-"
# gunicorn's default format, and the request id every answer carries (nsfw/web/observe.py).
access_log_format = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" %({x-request-id}o)s'
# Query strings are redacted in the access log: pre-signed image URLs carry their signatures there.
logger_class = "nsfw.accesslog.Logger"
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOG_LEVEL", "info")


# gunicorn's exit code for a worker that failed to boot: the arbiter stops instead of respawning.
WORKER_BOOT_ERROR = 3


def on_starting(server: Any) -> None:
    """Once per start, in the arbiter: a warning when the service is open to anyone who can reach it."""
    from nsfw.config import ConfigError, Settings

    try:
        settings = Settings.from_env(os.environ)
    except ConfigError:
        return  # each worker stops the boot with the message that names the variable
    if not settings.api_keys:
        server.log.warning(
            "NSFW_API_KEYS is empty: every route is open to anyone who can reach this service "
            "(python -m nsfw keys new NAME makes a key)"
        )
    if settings.review:
        _migrate(server)


def _migrate(server: Any) -> None:
    """The review store's migrations, once per start, before any worker serves (not once per worker,
    racing): the same command an operator runs, in a process of its own, so that the arbiter never
    loads SQLAlchemy. A failure stops the start."""
    import subprocess

    done = subprocess.run([sys.executable, "-m", "nsfw", "db", "upgrade"], capture_output=True, text=True)
    if done.returncode:
        server.log.error("python -m nsfw db upgrade failed:\n%s", (done.stdout + done.stderr)[-4000:])
        raise SystemExit(WORKER_BOOT_ERROR)
    server.log.info(done.stdout.strip())


# The folder this instance's workers share (NSFW_INSTANCE_DIR): the rate limit counters
# (limits.sqlite, nsfw/web/limitstore.py) and prometheus_client's multiprocess files (metrics/, nsfw/metrics.py:
# each worker writes its samples there, /metrics reads them all). Made fresh at each start, so a
# restart does not add the last run's counts; on tmpfs, like the heartbeat files. Made when gunicorn
# reads this file: prometheus_client decides its mode when it is first imported, and the arbiter
# imports it (with nsfw.web.frontend, the worker class) before any hook runs. Removed when the arbiter
# exits. An operator's own NSFW_INSTANCE_DIR or PROMETHEUS_MULTIPROC_DIR is emptied instead.
_INSTANCE_ENV, _METRICS_ENV = "NSFW_INSTANCE_DIR", "PROMETHEUS_MULTIPROC_DIR"


def _fresh(folder: str) -> None:
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)


def _fresh_instance_folder() -> None:
    import atexit
    import shutil
    import tempfile

    instance = os.environ.get(_INSTANCE_ENV)
    if instance:
        _fresh(instance)
    else:
        instance = tempfile.mkdtemp(prefix="nsfw-instance-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
        os.environ[_INSTANCE_ENV] = instance  # before any worker is forked: every worker shares it
        # Workers inherit the exit hook; the pid keeps them off it.
        creator = os.getpid()
        atexit.register(lambda: os.getpid() == creator and shutil.rmtree(instance, ignore_errors=True))
    metrics = os.environ.get(_METRICS_ENV)
    if metrics:
        _fresh(metrics)
    else:
        os.environ[_METRICS_ENV] = os.path.join(instance, "metrics")
        os.makedirs(os.environ[_METRICS_ENV])


_fresh_instance_folder()

# gunicorn 27's control socket (gunicornc) lives in the instance folder: its default,
# ~/.gunicorn/gunicorn.ctl, is one path for every master of a user, so a second instance on the host
# (a scaled deployment, a test beside a running service) took it from the first.
control_socket = os.path.join(os.environ[_INSTANCE_ENV], "gunicorn.ctl")


def child_exit(server: Any, worker: Any) -> None:
    """A dead worker's live gauges (in flight) stop counting; its counters stay in the totals."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def worker_exit(server: Any, worker: Any) -> None:
    """A worker's store ends cleanly: its maintenance thread stops, the features' closers run (the
    webhooks the review queue delivered but could not mark yet are marked, else they are sent again
    once their leases run out), and its connections close."""
    from nsfw.web import state

    app = getattr(worker, "wsgi", None)
    store = state.store(app) if app is not None and hasattr(app, "extensions") else None
    if store is not None:
        store.close()


def post_worker_init(worker: Any) -> None:
    """Refuse to serve when an admitted request could find no thread, or one caller could hold them all."""
    settings = worker.wsgi.extensions["nsfw"].settings
    threads = worker.cfg.threads
    if settings.max_in_flight >= threads:
        worker.log.error(
            "NSFW_MAX_IN_FLIGHT=%d needs more gunicorn threads than %d (GUNICORN_THREADS)",
            settings.max_in_flight,
            threads,
        )
        sys.exit(WORKER_BOOT_ERROR)
    if settings.max_queue > threads:
        worker.log.error(
            "NSFW_MAX_QUEUE=%d needs at least as many gunicorn threads, not %d (GUNICORN_THREADS)",
            settings.max_queue,
            threads,
        )
        sys.exit(WORKER_BOOT_ERROR)


# glibc's mallopt parameter for the size above which malloc maps memory of its own (man mallopt).
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 4 * 1024 * 1024


def post_fork(server: Any, worker: Any) -> None:
    """Buffers of 4 MiB and more (decoded images) go back to the OS when freed.

    By default glibc raises its mmap threshold after the first large free, and later decodes land in
    per-thread arenas that keep the memory: bench.serve measured workers idling at 137 MB after a
    4000x3000 JPEG, with 200 MB peaks, instead of 108 MB and 158 MB with a fixed threshold. A no-op
    where the C library is not glibc.
    """
    libc_name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(libc_name) if libc_name else None
    if libc is not None and hasattr(libc, "mallopt"):
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
