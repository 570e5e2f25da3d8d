"""The service's Prometheus metrics: module-level objects, as prometheus_client's multiprocess mode wants.

Under gunicorn every worker writes its samples to files in PROMETHEUS_MULTIPROC_DIR, which
gunicorn.conf.py makes fresh at start (and marks each dead worker's files); `/metrics` builds a
registry over that folder per scrape, so the numbers are the instance's, all workers together.
Without that variable (tests, the command line) the process's own registry is used. No Flask here:
the service counts its stages, nsfw/web/observe.py the requests.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

# Request latency buckets, in seconds: a prediction takes 15 ms to a few seconds (downloads).
_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

HTTP_REQUESTS = Counter(
    "nsfw_http_requests_total", "HTTP requests answered, by route rule and status.", ["method", "route", "status"]
)
# By API key name (never a token; "-" without a key): who uses the service, and who hits the limit
# (status 429). Names are the operator's NSFW_API_KEYS entries, so the label stays small.
KEY_REQUESTS = Counter(
    "nsfw_key_requests_total", "HTTP requests answered, by API key name and status.", ["key", "status"]
)
HTTP_DURATION = Histogram(
    "nsfw_http_request_duration_seconds", "Time to answer, by route rule.", ["route"], buckets=_SECONDS
)
STAGE_DURATION = Histogram(
    "nsfw_stage_duration_seconds",
    "Time in each stage of a prediction: fetch, decode (and preprocess), inference.",
    ["stage", "model"],
    buckets=_SECONDS,
)
PREDICTIONS = Counter("nsfw_predictions_total", "Images classified, by model and verdict.", ["model", "verdict"])
UPSTREAM_ERRORS = Counter("nsfw_upstream_errors_total", "Fetches that failed, by error code.", ["code"])
REFUSED_IMAGES = Counter(
    "nsfw_refused_images_total", "Images refused before or while decoding (422), by code.", ["code"]
)
RATE_LIMIT_ERRORS = Counter(
    "nsfw_rate_limit_errors_total", "Rate limit checks the counter store failed (the requests went through)."
)
PLATFORM_ANSWERS = Counter(
    "nsfw_platform_answers_total",
    "What the platform adapters (/compat/<platform>/) answered: each image's verdict, or an error's code.",
    ["platform", "outcome"],
)
IN_FLIGHT = Gauge("nsfw_in_flight", "Requests the app is working on.", multiprocess_mode="livesum")
MODEL_INFO = Gauge(
    "nsfw_model_info",
    "The models this instance serves (1 each).",
    ["name", "version", "sha256"],
    multiprocess_mode="max",
)

# The review queue (nsfw/review/): its depth and oldest item, set by whichever worker looked last.
REVIEW_PENDING = Gauge("nsfw_review_pending", "Review items waiting for a human.", multiprocess_mode="mostrecent")
REVIEW_OLDEST_SECONDS = Gauge(
    "nsfw_review_oldest_pending_seconds", "Age of the oldest pending review item.", multiprocess_mode="mostrecent"
)
REVIEW_QUEUED = Counter("nsfw_review_queued_total", "Images queued for review, by kind (unknown, audit).", ["kind"])
REVIEW_REMEMBERED = Counter("nsfw_review_remembered_total", "Verdicts answered from a human decision.")
REVIEW_DECISIONS = Counter("nsfw_review_decisions_total", "Human decisions, by label.", ["label"])
REVIEW_APPEALS = Counter("nsfw_review_appeals_total", "Decisions the client apps' users appealed.")
REVIEW_STORE_ERRORS = Counter(
    "nsfw_review_store_errors_total", "Review store operations that failed, by operation.", ["operation"]
)
REVIEW_NOT_QUEUED = Counter(
    "nsfw_review_not_queued_total",
    "Detailed predictions whose image was not queued (or whose ref was not kept), by the answer's review.error code.",
    ["code"],
)
REVIEW_RETAINED = Counter(
    "nsfw_review_retained_total",
    "What retention did: items expired, pictures dropped, expired items, audit rows and webhook messages deleted.",
    ["kind"],
)
WEBHOOK_DELIVERIES = Counter(
    "nsfw_webhook_deliveries_total", "Webhook attempts, by outcome (delivered, retried, failed).", ["outcome"]
)

# The near-duplicate matcher (nsfw/matching/).
MATCH_SIGNALS = Gauge(
    "nsfw_match_signals",
    "Signals in each worker's match index (decisions' and banks' hashes), by worker.",
    multiprocess_mode="liveall",
)
MATCHES = Counter(
    "nsfw_matches_total",
    "Verdicts a match changed, by what matched (human, bank) and the label it gave (adult, safe, unknown).",
    ["source", "label"],
)
MATCH_ERRORS = Counter(
    "nsfw_match_errors_total", "Index follows that failed (the index stays as it was until the next).", ["operation"]
)
RETROACTIVE_DECISIONS = Counter(
    "nsfw_review_retroactive_total", "Pending items decided with a near-duplicate's decision, by label.", ["label"]
)

ADAPTER_TRAININGS = Counter(
    "nsfw_adapter_trainings_total", "Adapters trained, by model and whether they passed the gate.", ["model", "result"]
)
ADAPTER_VERSION = Gauge(
    "nsfw_adapter_version",
    "The promoted adapter version each model's tier serves (0: none), as each worker last read it.",
    ["model"],
    multiprocess_mode="liveall",  # by worker: a worker still on an old version shows
)
ADAPTER_VERDICTS = Counter(
    "nsfw_adapter_verdicts_total", "Verdicts the promoted adapter gave, by model and label.", ["model", "label"]
)
CACHE_LOOKUPS = Counter(
    "nsfw_cache_lookups_total",
    "Result cache lookups, by layer (memory, redis; all for a miss) and outcome.",
    ["layer", "outcome"],
)
CACHE_ERRORS = Counter(
    "nsfw_cache_errors_total",
    "Result cache operations Redis failed (get, set: misses), or not tried as it keeps failing (skipped).",
    ["operation"],
)
CACHE_BREAKER_OPENED = Counter(
    "nsfw_cache_breaker_opened_total", "Times Redis failed often enough in a row to be left alone for a while."
)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def exposition() -> bytes:
    """The text format of every metric: all workers' when PROMETHEUS_MULTIPROC_DIR is set."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest()
