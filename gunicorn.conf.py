"""gunicorn settings for every deployment (Procfile, .do/app.yaml, Dockerfile): `gunicorn app:app`."""

import os

# PORT and WEB_CONCURRENCY are the platform's (DigitalOcean, Heroku, Docker); NSFW_* are the app's.
bind = f"0.0.0.0:{os.environ.get('PORT', '8080')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# Threads let /health (and fetches, which wait on the network) run while another thread predicts;
# the interpreter itself runs one prediction at a time per worker.
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
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
