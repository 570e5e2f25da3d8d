"""gunicorn settings for the baseline (bench.baseline_app): the deployed worker model, 2 gthread
workers with 8 threads, without the service's own hooks; a longer timeout for TensorFlow's start."""

import os

bind = f"127.0.0.1:{os.environ['PORT']}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "gthread"
threads = 8
timeout = 120
