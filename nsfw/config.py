"""Settings: defaults, then NSFW_* environment variables, then validation that names the variable."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar

from nsfw.numbers import parse_float, parse_int

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# NSFW_RATE_LIMIT_STORAGE's schemes (limits' RedisStorage; nsfw/web/limitstore.py maps them).
REDIS_SCHEMES = ("redis", "rediss", "redis+unix")

BACKENDS = ("litert", "tensorflow")
RESIZE_MODES = ("nsfwjs", "gantman")
LOG_FORMATS = ("text", "json")
# The platforms whose own protocol the service speaks under /compat/<platform>/ (nsfw/web/compat/).
COMPAT_PLATFORMS = ("misskey", "pictrs", "nsfw_api", "discourse")
ACCEPT_OR_REJECT = ("accept", "reject")
NSFW_API_SCORES = ("adult", "porn_hentai")
# Client address headers each proxy appends a hop to; any other (DO-Connecting-IP, CF-Connecting-IP,
# X-Real-IP, Fly-Client-IP) holds the one address its proxy set.
LIST_HEADERS = frozenset({"x-forwarded-for"})
PREFIX = "NSFW_"
DEFAULT_MODELS_DIR = Path(__file__).resolve().parents[1] / "models"


def threshold_problems(adult_threshold: float, safe_threshold: float) -> list[str]:
    """What is wrong with a verdict policy's two thresholds (NSFW_ADULT_THRESHOLD, NSFW_SAFE_THRESHOLD,
    or a request's override of them); empty when they make a policy."""
    found = [
        f"{name} must be in (0, 1]"
        for name, value in (("adult_threshold", adult_threshold), ("safe_threshold", safe_threshold))
        if not 0 < value <= 1  # also refuses NaN
    ]
    if not found and adult_threshold + safe_threshold <= 1:
        # The two sums add up to 1, so both rules could match one image.
        found.append("adult_threshold + safe_threshold must be above 1")
    return found


class ConfigError(ValueError):
    """A setting is wrong; raised at boot, before any request is served."""


# What a key may be used for: `predict` (every prediction and catalogue route), `review` (the review
# queue) and `banks` (the matcher's hash banks). A key without scopes has `predict`.
SCOPES = ("predict", "review", "banks")
_KEY_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# URL-safe base64, as `python -m nsfw keys new` makes them; at least 32 characters (192 bits).
_KEY_TOKEN = re.compile(r"[A-Za-z0-9_-]{32,512}")


@dataclass(frozen=True)
class ApiKey:
    """One entry of NSFW_API_KEYS. The token never appears in a repr, a log line or a metric."""

    name: str
    token: str = field(repr=False)
    scopes: frozenset[str] = frozenset({"predict"})

    def entry(self) -> str:
        """The NSFW_API_KEYS entry that defines this key."""
        scopes = "+".join(scope for scope in SCOPES if scope in self.scopes)
        return f"{self.name}:{self.token}" + ("" if self.scopes == {"predict"} else f":{scopes}")


def parse_api_keys(raw: str) -> tuple[ApiKey, ...]:
    """`name:token[:scope+scope],...` -> the keys; ValueError naming what is wrong (never the token)."""
    keys: list[ApiKey] = []
    for number, entry in enumerate(_split(raw), 1):
        parts = entry.split(":")
        if len(parts) not in (2, 3):
            raise ValueError(f"entry {number} is not name:token or name:token:scopes")
        name, token = parts[0], parts[1]
        scopes = frozenset(parts[2].split("+")) if len(parts) == 3 else frozenset({"predict"})
        if not _KEY_NAME.fullmatch(name):
            raise ValueError(f"entry {number}: the name must be 1-64 of A-Z a-z 0-9 _ . -")
        if not _KEY_TOKEN.fullmatch(token):
            raise ValueError(f"key {name}: the token must be 32-512 URL-safe characters (python -m nsfw keys new)")
        if not scopes or not scopes <= set(SCOPES):
            raise ValueError(f"key {name}: scopes are {' and '.join(SCOPES)}, joined with +")
        keys.append(ApiKey(name, token, scopes))
    if len({key.name for key in keys}) != len(keys):
        raise ValueError("two keys have the same name")
    if len({key.token for key in keys}) != len(keys):
        raise ValueError("two keys have the same token")
    return tuple(keys)


@dataclass(frozen=True)
class RuntimeSettings:
    """Which models each worker serves, and on what runtime."""

    # Runtime of mobilenet_v2: litert (default; no TensorFlow) or tensorflow (loads the .keras file).
    # inception_v3 and open_nsfw run on ONNX Runtime, private_detector on TensorFlow.
    backend: str = "litert"
    # The default model: what /predict runs without ?model= (served even if NSFW_MODELS omits it).
    model: str = "mobilenet_v2"
    # The models each worker loads at boot and serves with ?model= (GET /models lists the catalogue).
    # Each costs memory in every worker (README, "Models"): mobilenet_v2 alone fits 2 workers in 1 GB.
    # Of mobilenet_v2, inception_v3, open_nsfw, private_detector.
    models: tuple[str, ...] = ("mobilenet_v2",)
    # Folder of Bumble's private detector SavedModel (not bundled: its weights sit on a cloud bucket);
    # needed when NSFW_MODELS has private_detector, and TensorFlow with it (requirements-tf.txt).
    private_detector_path: Path | None = None
    # Folder holding the model artifacts.
    models_dir: Path = DEFAULT_MODELS_DIR
    # Default resize: nsfwjs (bilinear, align-corners, as nsfwjs) or gantman (Pillow NEAREST).
    resize: str = "nsfwjs"
    # Load the model in a background thread, so /health answers 503 at once while it loads (worth it
    # for the slow TensorFlow backend); a failed load still ends the worker with gunicorn's boot-error
    # code. Off (default): the worker loads before it accepts connections, so no request sees a 503.
    load_in_background: bool = False
    # Threads the runtime may use for one prediction; 1 suits a 1 vCPU box with 2 workers.
    inference_threads: int = 1

    @property
    def served_models(self) -> tuple[str, ...]:
        """The models each worker loads: the default first, then NSFW_MODELS."""
        return (self.model, *(name for name in self.models if name != self.model))

    def _checks(self) -> list[tuple[str, bool, str]]:
        """Rows (field, ok, why) of what is wrong with this group's values (Settings.validate)."""
        return [
            ("backend", self.backend in BACKENDS, f"must be one of {', '.join(BACKENDS)}"),
            ("resize", self.resize in RESIZE_MODES, f"must be one of {', '.join(RESIZE_MODES)}"),
            ("models_dir", self.models_dir.is_dir(), "must be a directory"),
            ("inference_threads", 1 <= self.inference_threads <= 64, "must be 1..64"),
        ]


@dataclass(frozen=True)
class FetchSettings:
    """Downloading an image: timeouts, sizes, which destinations (nsfw/fetch.py)."""

    # Seconds to establish the TCP (and TLS) connection to the image host.
    connect_timeout: float = 3.0
    # Seconds to wait for any single read from the image host.
    read_timeout: float = 5.0
    # Seconds for the whole download, redirects included; a slow drip ends here.
    download_timeout: float = 10.0
    # Largest image body fetched, in bytes (counted after any content decoding).
    max_bytes: int = 10 * 1024 * 1024
    # Longest accepted URL, in characters.
    max_url_length: int = 2048
    # Redirect hops followed; each hop is checked like the first URL.
    max_redirects: int = 3
    # Ports that may be fetched.
    allowed_ports: tuple[int, ...] = (80, 443)
    # CIDRs that may be fetched although private, loopback or otherwise refused. Empty by default.
    allowed_networks: tuple[IPNetwork, ...] = field(default=())
    # Bytes one request (a batch: all its items) may download from image hosts in total; an item
    # whose download would pass it answers 422 download_budget_exceeded. With one fetch per distinct
    # URL this bounds what one small request can make us pull from a third party.
    max_request_download_bytes: int = 32 * 1024 * 1024
    # Connections one request (a batch) holds to one image host at once.
    max_host_connections: int = 2

    def _checks(self) -> list[tuple[str, bool, str]]:
        """Rows (field, ok, why) of what is wrong with this group's values (Settings.validate)."""
        return [
            ("connect_timeout", 0 < self.connect_timeout <= 60, "must be in (0, 60]"),
            ("read_timeout", 0 < self.read_timeout <= 60, "must be in (0, 60]"),
            ("download_timeout", 0 < self.download_timeout <= 300, "must be in (0, 300]"),
            ("max_bytes", 1024 <= self.max_bytes <= 1 << 30, "must be 1 KiB..1 GiB"),
            ("max_url_length", 16 <= self.max_url_length <= 65536, "must be 16..65536"),
            ("max_redirects", 0 <= self.max_redirects <= 10, "must be 0..10"),
            ("allowed_ports", all(0 < p < 65536 for p in self.allowed_ports), "ports are 1..65535"),
            (
                "max_request_download_bytes",
                self.max_bytes <= self.max_request_download_bytes <= 1 << 34,
                "must be NSFW_MAX_BYTES..16 GiB",
            ),
            ("max_host_connections", 1 <= self.max_host_connections <= 64, "must be 1..64"),
        ]


@dataclass(frozen=True)
class DecodeSettings:
    """Decoding an image: what one decode may cost (nsfw/imaging/)."""

    # Largest image decoded, in pixels (width x height) of its real canvas, checked before decoding;
    # also the canvas area an animation's decoded frames may add up to (each seek decodes the frames
    # before it).
    max_pixels: int = 40_000_000
    # Most memory one decode may take at its peak, in bytes, as the container headers price it before
    # any pixel is decoded (nsfw/imaging/budget.py: every frame decoded, the real canvas, the
    # decoder's sample size); past it a 422 image_too_large_to_decode. 224 MiB decodes a 16 MP WebP
    # (its decoder holds 13 bytes a pixel), keeps a worker (88 MB with the model) under 350 MB, and
    # 2 workers decoding at once under 700 MB with the master (bench/hostile.py measures it).
    max_decode_bytes: int = 224 * 1024 * 1024
    # Scans a JPEG may have: each walks every coefficient again (a progressive JPEG has about 10;
    # a file of repeated scans held a core for minutes). More is a 422 image_too_complex.
    max_jpeg_scans: int = 64
    # Frames of an animation decoded at most to reach the sampled ones (tiny frames cost time each).
    max_decoded_frames: int = 1000
    # Seconds one image's decoding and preprocessing may take; past it a 422 image_too_complex
    # (checked between frames and between the decoder's input blocks). A batch's deadline cuts it shorter.
    decode_timeout: float = 5.0
    # Frames classified per animation (GIF, WebP, APNG), spread from the first to the last; the
    # answer is the frame with the highest hentai + porn + sexy. 1 classifies the first frame only.
    max_frames: int = 8
    # Largest total of PNG text metadata (tEXt/zTXt/iTXt) decoded per image, in bytes; a compressed
    # text bomb past it is a 422.
    max_metadata_bytes: int = 1024 * 1024

    def _checks(self) -> list[tuple[str, bool, str]]:
        """Rows (field, ok, why) of what is wrong with this group's values (Settings.validate)."""
        return [
            ("max_pixels", 1 <= self.max_pixels <= 200_000_000, "must be 1..200000000"),
            ("max_decode_bytes", 1 << 20 <= self.max_decode_bytes <= 1 << 34, "must be 1 MiB..16 GiB"),
            ("max_jpeg_scans", 1 <= self.max_jpeg_scans <= 10_000, "must be 1..10000"),
            ("max_decoded_frames", 1 <= self.max_decoded_frames <= 1_000_000, "must be 1..1000000"),
            ("decode_timeout", 0 < self.decode_timeout <= 600, "must be in (0, 600] seconds"),
            ("max_frames", 1 <= self.max_frames <= 64, "must be 1..64"),
            ("max_metadata_bytes", 1024 <= self.max_metadata_bytes <= 1 << 26, "must be 1 KiB..64 MiB"),
        ]


@dataclass(frozen=True)
class VideoSettings:
    """Decoding a video: sampled frames, by a child process under limits (nsfw/imaging/video.py)."""

    # Frames sampled per video: keyframes near equally spaced times over its duration (fewer when its
    # keyframes are fewer), classified in time order; the answer is the worst.
    video_frames: int = 16
    # Stop at the first sampled frame judged adult (under NSFW_ADULT_THRESHOLD): the rest cannot make
    # the answer safer.
    video_early_stop: bool = True
    # Largest video read, in bytes, fetched or uploaded (spooled to disk, never held in memory).
    # A still image stays under NSFW_MAX_BYTES.
    max_video_bytes: int = 100 * 1024 * 1024
    # Longest video read, in seconds, as its container says (a 422 video_too_long past it).
    max_video_seconds: float = 3600.0
    # Largest frame, in pixels, declared by the container or met while decoding: 4K (3840 x 2160).
    max_video_pixels: int = 3840 * 2160
    # Seconds one video's decoding may take, from the decoder's start to its last frame; frames read
    # by then are the answer's, none is a 504.
    video_timeout: float = 20.0
    # Address space of the decoder's child process (RLIMIT_AS), in bytes: its Python, FFmpeg's
    # libraries and the decoder's frames (H.264 needs more than 256 MiB of address space to start).
    video_memory_bytes: int = 1024 * 1024 * 1024

    def _checks(self) -> list[tuple[str, bool, str]]:
        """Rows (field, ok, why) of what is wrong with this group's values (Settings.validate)."""
        return [
            ("video_frames", 1 <= self.video_frames <= 64, "must be 1..64"),
            ("max_video_bytes", 1024 <= self.max_video_bytes <= 1 << 34, "must be 1 KiB..16 GiB"),
            ("max_video_seconds", 0 < self.max_video_seconds <= 86400, "must be in (0, 86400] seconds"),
            ("max_video_pixels", 1 <= self.max_video_pixels <= 200_000_000, "must be 1..200000000"),
            ("video_timeout", 0 < self.video_timeout <= 600, "must be in (0, 600] seconds"),
            ("video_memory_bytes", 256 << 20 <= self.video_memory_bytes <= 1 << 36, "must be 256 MiB..64 GiB"),
        ]


@dataclass(frozen=True)
class FlowSettings:
    """Who may fetch, parse or compute now, per worker (nsfw/pipeline/flow.py, nsfw/web/frontend.py)."""

    # Downloads one caller (client address) may have in flight per worker; more from that caller get a
    # fast 503 `overloaded` with Retry-After. A batch's items wait for their caller's share instead.
    # Below gunicorn's threads, so that one caller never holds them all; the worker refuses to boot
    # otherwise.
    max_in_flight: int = 4
    # Downloads per worker in flight at once, all callers together; resolving a host name counts.
    max_downloads: int = 16
    # Seconds a request waits for a download slot of its caller before that 503 (a few concurrent
    # requests of one client are a burst, not an attack; a batch waits up to its own deadline).
    download_wait: float = 0.1
    # Requests one worker holds at once (receiving their body, downloading, waiting for or using the
    # model); past it a fast 503 before any of the body is read. At most gunicorn's threads.
    max_queue: int = 32
    # Of those, what one caller may hold.
    max_queue_per_caller: int = 24
    # Seconds an admitted request waits for the worker's model (one image at a time) before a 503.
    compute_wait: float = 5.0
    # Seconds a client has to send a request body once its headers are in; 408 past them.
    body_timeout: float = 20.0
    # Request bodies (JSON with image_base64, uploads) one worker parses at once: each may take
    # about three times its size in memory while it is parsed. Others wait up to compute_wait.
    max_body_decodes: int = 2
    # Videos one worker decodes at once, each in a child process (up to ~100 MB of memory apiece);
    # others wait up to NSFW_COMPUTE_WAIT, then a 503. 1 keeps 2 workers and 2 videos under 700 MB.
    max_video_decodes: int = 1

    def _checks(self) -> list[tuple[str, bool, str]]:
        """Rows (field, ok, why) of what is wrong with this group's values (Settings.validate)."""
        return [
            ("max_in_flight", 1 <= self.max_in_flight <= 256, "must be 1..256"),
            ("max_video_decodes", 1 <= self.max_video_decodes <= 64, "must be 1..64"),
            ("max_downloads", self.max_in_flight <= self.max_downloads <= 1024, "must be NSFW_MAX_IN_FLIGHT..1024"),
            ("download_wait", 0 <= self.download_wait <= 10, "must be 0..10 seconds"),
            ("max_queue", 1 <= self.max_queue <= 1024, "must be 1..1024"),
            ("max_queue_per_caller", 1 <= self.max_queue_per_caller <= self.max_queue, "must be 1..NSFW_MAX_QUEUE"),
            ("compute_wait", 0 <= self.compute_wait <= 60, "must be 0..60 seconds"),
            ("body_timeout", 0 < self.body_timeout <= 600, "must be in (0, 600] seconds"),
            ("max_body_decodes", 1 <= self.max_body_decodes <= 64, "must be 1..64"),
        ]


@dataclass(frozen=True)
class VerdictSettings:
    """Scores -> adult / unknown / safe, and the second tier (nsfw/pipeline/verdict.py)."""

    # Verdicts (?detail=true): adult when hentai + porn + sexy reaches this...
    adult_threshold: float = 0.7
    # ...safe when drawings + neutral reaches this, unknown (human review) otherwise. The two must add
    # up to more than 1, so that no image matches both.
    safe_threshold: float = 0.7
    # The second tier, asked when the verdict is unknown (nsfw/pipeline/verdict.py): an operator's endpoint...
    # (empty: none).
    second_tier_url: str = ""
    # ...or a second model of NSFW_MODELS, run on the same image (empty: none). At most one of the two.
    second_tier_model: str = ""
    # Seconds for the whole second-tier call; past it the verdict stays unknown.
    second_tier_timeout: float = 3.0
    # The second tier's probability at or above this is adult...
    second_tier_adult_threshold: float = 0.95
    # ...at or below this safe, between them still unknown.
    second_tier_safe_threshold: float = 0.05
    # A promoted adapter (python -m nsfw adapter promote) decides what the first tier leaves unknown;
    # true: it may also overturn the first tier's automatic verdict when it is sure of the other label
    # (never a human's remembered decision).
    adapter_override: bool = False

    def _checks(self) -> list[tuple[str, bool, str]]:
        """Rows (field, ok, why) of what is wrong with this group's values (Settings.validate)."""
        return [
            (
                "adult_threshold",
                not threshold_problems(self.adult_threshold, self.safe_threshold),
                "; ".join(threshold_problems(self.adult_threshold, self.safe_threshold)),
            ),
            (
                "second_tier_url",
                not self.second_tier_url or self.second_tier_url.startswith(("http://", "https://")),
                "must be an http(s) URL or empty",
            ),
            (
                "second_tier_model",
                not (self.second_tier_model and self.second_tier_url),
                "set it or NSFW_SECOND_TIER_URL, not both",
            ),
            ("second_tier_timeout", 0 < self.second_tier_timeout <= 60, "must be in (0, 60]"),
            (
                "second_tier_adult_threshold",
                0 <= self.second_tier_safe_threshold < self.second_tier_adult_threshold <= 1,
                "must be above NSFW_SECOND_TIER_SAFE_THRESHOLD, both in [0, 1]",
            ),
        ]


@dataclass(frozen=True)
class BatchSettings:
    """POST /predict/batch (nsfw/pipeline/batch.py)."""

    # Items one POST /predict/batch may carry.
    max_batch: int = 32
    # Largest /predict/batch body, in bytes (items may carry image_base64).
    max_batch_bytes: int = 32 * 1024 * 1024
    # Seconds for a whole batch; items whose fetch has not ended by then answer upstream_timeout.
    batch_timeout: float = 20.0
    # Items of one batch fetched and decoded at once (decoding and inference still run one at a time).
    batch_concurrency: int = 4

    def _checks(self) -> list[tuple[str, bool, str]]:
        """Rows (field, ok, why) of what is wrong with this group's values (Settings.validate)."""
        return [
            ("max_batch", 1 <= self.max_batch <= 1024, "must be 1..1024"),
            ("max_batch_bytes", 1024 <= self.max_batch_bytes <= 1 << 30, "must be 1 KiB..1 GiB"),
            ("batch_timeout", 0 < self.batch_timeout <= 600, "must be in (0, 600]"),
            ("batch_concurrency", 1 <= self.batch_concurrency <= 64, "must be 1..64"),
        ]


@dataclass(frozen=True)
class WebSettings:
    """The HTTP edge: request bodies, keys, rate limits, proxies, logs (nsfw/web/)."""

    # Largest request body of fields alone (a URL in JSON or a form), in bytes; bodies carrying an
    # image may add NSFW_MAX_BYTES (in base64 for JSON) to it.
    max_request_bytes: int = 64 * 1024
    # API keys, `name:token[:scope+scope]` comma-separated (scopes: predict, the default, and review).
    # When any is set, every route but /health needs one (Authorization: Bearer, or X-API-Key);
    # when none is, the service is open, as NSFW-FLASK was, and says so at boot.
    api_keys: tuple[ApiKey, ...] = field(default=())
    # A bearer token for GET /metrics alone (a Prometheus scraper needs no API key then); empty:
    # /metrics is asked like every other route (open without keys, a predict key with them).
    metrics_token: str = field(default="", repr=False)
    # Requests allowed per key (per client address without one), in Flask-Limiter's notation:
    # `120/minute;5000/day`. Empty: no limit. Over it: 429 rate_limited with Retry-After.
    rate_limit: str = ""
    # Where the rate limit counters live: a Redis URI (redis://[:password@]host:port/db, rediss://, or
    # redis+unix://) shared by several instances; empty: the instance's own SQLite file on tmpfs.
    rate_limit_storage: str = field(default="", repr=False)
    # When the rate limit store fails: open (default; each worker's own counters stand in, logged and
    # counted) or closed (503 rate_limit_unavailable on limited routes until it answers).
    rate_limit_on_error: str = "open"
    # Proxies whose forwarded-for header is believed (CIDRs, comma-separated): when the socket's peer is
    # in one, the client address (rate limits, fair shares) is read from NSFW_CLIENT_ADDRESS_HEADER,
    # from the right, up to the first address that is not one of them. Empty: the socket's address.
    trusted_proxies: tuple[IPNetwork, ...] = field(default=())
    # The header trusted proxies put the client's address in: X-Forwarded-For (Heroku and most
    # proxies append to it), or a single-address header such as DigitalOcean App Platform's
    # DO-Connecting-IP (README, "Behind a proxy").
    client_address_header: str = "X-Forwarded-For"
    # A folder this instance's workers share: the rate limit counters (limits.sqlite) and the metrics
    # (metrics/). gunicorn.conf.py makes a fresh one on tmpfs at each start; empty without gunicorn
    # (the counters are then the process's own).
    instance_dir: Path | None = None
    # Log level of the nsfw logger.
    log_level: str = "INFO"
    # text (default), or json: the service's log lines and gunicorn's (its access log too) as one
    # JSON object a line, with the request id, key name, route, status, duration and verdict.
    log_format: str = "text"

    @property
    def forwards_a_list(self) -> bool:
        """Whether NSFW_CLIENT_ADDRESS_HEADER is a list each proxy appends to (X-Forwarded-For), read
        from the right; any other header holds one address, the one its trusted proxy set."""
        return self.client_address_header.lower() in LIST_HEADERS

    def _checks(self) -> list[tuple[str, bool, str]]:
        """Rows (field, ok, why) of what is wrong with this group's values (Settings.validate)."""
        return [
            ("max_request_bytes", 1024 <= self.max_request_bytes <= 1 << 30, "must be 1 KiB..1 GiB"),
            ("log_level", self.log_level in ("DEBUG", "INFO", "WARNING", "ERROR"), "a logging level"),
            ("log_format", self.log_format in LOG_FORMATS, f"must be one of {', '.join(LOG_FORMATS)}"),
            ("rate_limit_on_error", self.rate_limit_on_error in ("open", "closed"), "must be open or closed"),
            (
                "rate_limit_storage",
                not self.rate_limit_storage or self.rate_limit_storage.split("://", 1)[0] in REDIS_SCHEMES,
                "must be a Redis URI (redis://, rediss:// or redis+unix://) or empty",
            ),
            (
                "trusted_proxies",
                not (self.forwards_a_list and any(net.prefixlen == 0 for net in self.trusted_proxies)),
                "trusts every address with X-Forwarded-For, which every client writes: name the proxies, "
                "or read a single-address header a proxy sets (NSFW_CLIENT_ADDRESS_HEADER=DO-Connecting-IP)",
            ),
            (
                "client_address_header",
                bool(_HEADER_NAME.fullmatch(self.client_address_header)),
                "must be a header name (letters, digits and -)",
            ),
            (
                "metrics_token",
                not self.metrics_token or bool(_KEY_TOKEN.fullmatch(self.metrics_token)),
                "must be 32-512 URL-safe characters (python -m nsfw keys new makes one)",
            ),
        ]


@dataclass(frozen=True)
class CompatSettings:
    """The platform adapters (nsfw/web/compat/): which are on, which need no key, and how each maps
    a verdict into its platform's answer."""

    # Adapters served under /compat/<platform>/, comma-separated, of misskey, pictrs, nsfw_api and
    # discourse. Default: all of them. Empty: none (their paths answer 404).
    compat: tuple[str, ...] = COMPAT_PLATFORMS
    # Adapters answered without a key when NSFW_API_KEYS is set (a platform that cannot send one:
    # Pleroma's nsfw_api policy). Empty (default): each needs a key like /predict, in the platform's
    # own place for it (a header, or a key's token in the path for pictrs and nsfw_api).
    compat_open: tuple[str, ...] = ()
    # pict-rs: an image the verdict leaves `unknown` is accepted (default; it is queued for review
    # when NSFW_REVIEW is on) or rejected.
    compat_pictrs_unknown: str = "accept"
    # pict-rs: an upload this service cannot judge (unreadable, too large, overloaded, failing) is
    # accepted (default: pict-rs rejects every upload our failure touches, and an outage of this
    # service must not stop a community's uploads unless its operator chooses so) or rejected.
    compat_pictrs_on_error: str = "accept"
    # nsfw_api (Pleroma, Akkoma, Rebased): the score it answers: adult (hentai + porn + sexy, the
    # default, as open_nsfw's P(nsfw) counts suggestive images) or porn_hentai (hentai + porn).
    compat_nsfw_api_score: str = "adult"

    def _checks(self) -> list[tuple[str, bool, str]]:
        """Rows (field, ok, why) of what is wrong with this group's values (Settings.validate)."""
        known = f"must be a comma list of {', '.join(COMPAT_PLATFORMS)}"
        return [
            ("compat", set(self.compat) <= set(COMPAT_PLATFORMS), known),
            ("compat_open", set(self.compat_open) <= set(COMPAT_PLATFORMS), known),
            ("compat_pictrs_unknown", self.compat_pictrs_unknown in ACCEPT_OR_REJECT, "must be accept or reject"),
            ("compat_pictrs_on_error", self.compat_pictrs_on_error in ACCEPT_OR_REJECT, "must be accept or reject"),
            (
                "compat_nsfw_api_score",
                self.compat_nsfw_api_score in NSFW_API_SCORES,
                f"must be one of {', '.join(NSFW_API_SCORES)}",
            ),
        ]


@dataclass(frozen=True)
class CacheSettings:
    """The result cache (nsfw/cache.py)."""

    # Results each worker remembers (the image bytes' sha256 with model, version and resize -> its
    # scores): a repeated image is answered without decoding or inference. 0 (default): off, so every
    # request is classified as before; the deployment files set 1024 (about 0.5 MB a worker).
    cache_size: int = 0
    # Redis shared by every worker and instance: the result cache's second layer, and the rate limits'
    # counters unless NSFW_RATE_LIMIT_STORAGE says otherwise. Empty: none.
    redis_url: str = field(default="", repr=False)
    # Seconds a result stays in Redis.
    cache_ttl: int = 7 * 86400

    def _checks(self) -> list[tuple[str, bool, str]]:
        """Rows (field, ok, why) of what is wrong with this group's values (Settings.validate)."""
        return [
            ("cache_size", 0 <= self.cache_size <= 1_000_000, "must be 0..1000000 entries"),
            ("cache_ttl", 1 <= self.cache_ttl <= 365 * 86400, "must be 1 s..365 days"),
            (
                "redis_url",
                not self.redis_url or self.redis_url.split("://", 1)[0] in REDIS_SCHEMES,
                "must be a Redis URI (redis://, rediss:// or redis+unix://) or empty",
            ),
        ]


@dataclass(frozen=True)
class StoreSettings:
    """The database the review queue (and what comes next) keeps its state in (nsfw/store/)."""

    # The review store: SQLAlchemy URL (postgresql+psycopg://user:pass@host/db); empty: SQLite at
    # NSFW_DATA_DIR/nsfw.db (lost with the container's disk on App Platform: use PostgreSQL there).
    database_url: str = field(default="", repr=False)
    # Where the default SQLite store lives.
    data_dir: Path = Path("data")

    @property
    def database(self) -> str:
        """The review store's SQLAlchemy URL: NSFW_DATABASE_URL (a plain postgresql:// one through
        psycopg 3), else SQLite in NSFW_DATA_DIR."""
        for plain in ("postgresql://", "postgres://"):
            if self.database_url.startswith(plain):
                return "postgresql+psycopg://" + self.database_url.removeprefix(plain)
        return self.database_url or f"sqlite:///{(self.data_dir / 'nsfw.db').resolve()}"

    def _checks(self) -> list[tuple[str, bool, str]]:
        """Rows (field, ok, why) of what is wrong with this group's values (Settings.validate)."""
        return [
            (
                "database_url",
                not self.database_url or self.database_url.startswith(DATABASE_SCHEMES),
                f"must start with one of {', '.join(DATABASE_SCHEMES)}",
            ),
        ]


@dataclass(frozen=True)
class ReviewSettings:
    """The review queue, its webhooks and the moderators' sign-in (nsfw/review/)."""

    # The review queue (nsfw/review/): off unless true; needs a key with the review scope. With it on,
    # ?detail=true requests that end unknown are queued for a human, and human decisions are
    # remembered as verdicts for the same bytes.
    review: bool = False
    # Share of automatic adult and safe verdicts also queued (kind audit), so humans keep checking
    # the model; 0 (default) to 1.
    review_audit_rate: float = 0.0
    # Seconds a moderator's claim on an item lasts. The page claims an item only when the moderator
    # acts on it (reveal, a decision, a note), renews the claim while the item stays open and releases
    # it on skip, on moving on, on sign-out and when the tab closes: short, so a claim that a crashed
    # browser left behind frees itself soon.
    review_lease: float = 120.0
    # Longest side in pixels of the picture a moderator opens full-size (made from the decoded image,
    # never the original bytes; dropped with the thumbnail at retention).
    review_preview_px: int = 1280
    # Reason codes a moderator may give with a decision (the client app's statement of reasons to its
    # user: the EU Digital Services Act, Art. 17), carried in the review.decided webhook. Empty: none.
    review_reasons: tuple[str, ...] = ("nudity", "sexual_activity", "suggestive", "art", "medical")
    # Wellbeing defaults for every moderator (each may change the looks for themselves, and set
    # stricter limits, never looser ones, on the page's settings): the blur's strength in pixels,
    # greyscale until revealed, revealed only while a key or the button is held, scores hidden until
    # revealed (they prime the decision), and items revealed per sign-in and per day before a break
    # is suggested (0: no limit).
    review_blur_px: int = 24
    review_greyscale: bool = False
    review_hold_to_peek: bool = False
    review_hide_scores: bool = False
    review_session_reveals: int = 0
    review_daily_reveals: int = 0
    # Decisions are POSTed here (Standard Webhooks signatures); empty: no webhooks.
    review_webhook_url: str = ""
    # The webhook signing secret, whsec_<base64>; needed with NSFW_REVIEW_WEBHOOK_URL.
    review_webhook_secret: str = field(default="", repr=False)
    # Days a decided item keeps its pictures and refs; its scores, label and hash stay (they are the
    # memory). Also how long expired items and delivered or failed webhook messages are kept.
    review_retention_days: int = 30
    # Days an item may wait for a human; past them it leaves the queue as `expired`, with an audit row
    # and a review.expired webhook (never silently). 0: never.
    review_pending_days: int = 30
    # Days the audit log (claims, decisions, undos, deletions, expiries) is kept.
    review_audit_days: int = 365
    # Pending items one key's images may make (per-request thresholds could otherwise send any number
    # to the humans); past it that key's new items are not queued and the answer says
    # review_queue_full. 0: no limit.
    review_max_pending_per_key: int = 1000
    # Refs one item keeps from each key (so no key crowds out another's); past it a new ref of that key
    # is not kept (review_refs_full).
    review_max_refs: int = 20
    # Seconds one webhook delivery may take, the receiver's answer included.
    review_webhook_timeout: float = 10.0
    # Seconds a prediction waits for each of the review store's answers (a remembered decision, the
    # item it joins or makes); past them its answer says review.error, never waits on (above SQLite's
    # 5 s busy timeout, which a write may spend waiting for the lock under load).
    review_store_timeout: float = 6.0
    # Adapters learned from the decisions (python -m nsfw adapter train): one is promoted only when
    # its cross-validated agreement with the moderators beats the base model's by this many points...
    adapter_min_gain: float = 2.0
    # ...on at least this many decisions...
    adapter_min_items: int = 50
    # ...and the gain survives the paired test at this p (measured: 0.01 let 2 of 200 adapters fitted
    # to shuffled labels through; 0.001 none).
    adapter_max_p: float = 0.001
    # The newest decisions a training reads.
    adapter_max_items: int = 5000
    # Hours a moderator's sign-in lasts (a working day); signing out, a new password or removal end it
    # sooner, on every device.
    session_hours: int = 12
    # Signs the moderators' session cookies (the review pages); needed with NSFW_REVIEW, at least 32
    # characters (python -m nsfw keys new makes a good one). Changing it signs everyone out.
    secret_key: str = field(default="", repr=False)

    def _checks(self) -> list[tuple[str, bool, str]]:
        """Rows (field, ok, why) of what is wrong with this group's values (Settings.validate)."""
        return [
            (
                "secret_key",
                not self.review or len(self.secret_key) >= 32,
                "needs at least 32 characters with NSFW_REVIEW (it signs the moderators' sessions)",
            ),
            ("review_audit_rate", 0 <= self.review_audit_rate <= 1, "must be in [0, 1]"),
            ("review_lease", 1 <= self.review_lease <= 86400, "must be 1..86400 seconds"),
            ("review_preview_px", 256 <= self.review_preview_px <= 4096, "must be 256..4096"),
            ("review_blur_px", 4 <= self.review_blur_px <= 64, "must be 4..64 pixels"),
            ("review_session_reveals", 0 <= self.review_session_reveals <= 100_000, "must be 0..100000 (0: no limit)"),
            ("review_daily_reveals", 0 <= self.review_daily_reveals <= 100_000, "must be 0..100000 (0: no limit)"),
            (
                "review_reasons",
                len(self.review_reasons) <= 50 and all(_REASON_CODE.fullmatch(code) for code in self.review_reasons),
                "must be up to 50 comma-separated codes of a-z, 0-9 and _ (up to 40 characters each)",
            ),
            (
                "review_webhook_url",
                not self.review_webhook_url or self.review_webhook_url.startswith(("http://", "https://")),
                "must be an http(s) URL or empty",
            ),
            (
                "review_webhook_secret",
                not self.review_webhook_url or bool(_WEBHOOK_SECRET.fullmatch(self.review_webhook_secret)),
                "must be whsec_ and base64 (24-64 bytes) when NSFW_REVIEW_WEBHOOK_URL is set",
            ),
            ("review_retention_days", 1 <= self.review_retention_days <= 3650, "must be 1..3650"),
            ("review_pending_days", 0 <= self.review_pending_days <= 3650, "must be 0..3650 (0: never)"),
            ("review_audit_days", 1 <= self.review_audit_days <= 36500, "must be 1..36500"),
            ("review_max_pending_per_key", 0 <= self.review_max_pending_per_key <= 10_000_000, "must be 0..10000000"),
            ("review_max_refs", 1 <= self.review_max_refs <= 10_000, "must be 1..10000"),
            ("review_webhook_timeout", 0 < self.review_webhook_timeout <= 60, "must be in (0, 60] seconds"),
            ("review_store_timeout", 0 < self.review_store_timeout <= 60, "must be in (0, 60] seconds"),
            ("adapter_min_gain", 0 <= self.adapter_min_gain <= 100, "must be 0..100 points"),
            ("adapter_min_items", 10 <= self.adapter_min_items <= 1_000_000, "must be 10..1000000"),
            ("adapter_max_p", 0 < self.adapter_max_p <= 0.5, "must be in (0, 0.5]"),
            ("adapter_max_items", 10 <= self.adapter_max_items <= 100_000, "must be 10..100000"),
            ("session_hours", 1 <= self.session_hours <= 24 * 30, "must be 1..720 hours"),
        ]


@dataclass(frozen=True)
class MatchSettings:
    """The near-duplicate matcher (nsfw/matching/): PDQ hashes of every classified frame, looked up
    against human decisions and hash banks. On with the review queue, whose store holds them."""

    # Match near-duplicates (resized, re-encoded, flipped, cropped copies) of decided images and of
    # bank signals; false: exact bytes only, and no hashing.
    match: bool = True
    # The largest PDQ distance (of 256 bits) that matches; 31 is PDQ's usual threshold. A bank may
    # set its own.
    match_distance: int = 31
    # Frames (and signals) whose PDQ quality is below this neither match nor are matched: a flat or
    # tiny image's hash says little.
    match_min_quality: int = 50

    def _checks(self) -> list[tuple[str, bool, str]]:
        return [
            ("match_distance", 0 <= self.match_distance <= 128, "must be 0..128 (of 256 bits)"),
            ("match_min_quality", 0 <= self.match_min_quality <= 100, "must be 0..100"),
        ]


G = TypeVar("G")


def _view(settings: Settings, group: type[G]) -> G:
    """settings' values of one group, as that group's own type (what a room takes)."""
    return group(**{f.name: getattr(settings, f.name) for f in fields(group)})  # type: ignore[arg-type]


@dataclass(frozen=True)
class Settings(
    # Last first: a dataclass takes its bases' fields from the last base on, so fields(Settings), the
    # order variables are read and checked in, runs from the runtime to the matcher.
    MatchSettings,
    ReviewSettings,
    StoreSettings,
    CacheSettings,
    CompatSettings,
    WebSettings,
    BatchSettings,
    VerdictSettings,
    FlowSettings,
    VideoSettings,
    DecodeSettings,
    FetchSettings,
    RuntimeSettings,
):
    """Everything an operator can tune: one field per NSFW_<FIELD> variable, declared in its
    concern's group above; `settings.fetch`, `settings.decode`, ... give one group alone."""

    @property
    def runtime(self) -> RuntimeSettings:
        return _view(self, RuntimeSettings)

    @property
    def fetch(self) -> FetchSettings:
        return _view(self, FetchSettings)

    @property
    def decode(self) -> DecodeSettings:
        return _view(self, DecodeSettings)

    @property
    def video(self) -> VideoSettings:
        return _view(self, VideoSettings)

    @property
    def matching(self) -> MatchSettings:
        return _view(self, MatchSettings)

    @property
    def flow(self) -> FlowSettings:
        return _view(self, FlowSettings)

    @property
    def verdicts(self) -> VerdictSettings:
        return _view(self, VerdictSettings)

    @property
    def batch(self) -> BatchSettings:
        return _view(self, BatchSettings)

    @property
    def web(self) -> WebSettings:
        return _view(self, WebSettings)

    @property
    def platforms(self) -> CompatSettings:
        return _view(self, CompatSettings)

    @property
    def cache(self) -> CacheSettings:
        return _view(self, CacheSettings)

    @property
    def store(self) -> StoreSettings:
        return _view(self, StoreSettings)

    @property
    def reviewing(self) -> ReviewSettings:
        return _view(self, ReviewSettings)

    @property
    def max_json_image_bytes(self) -> int:
        """Largest JSON body carrying one image in base64 (4 characters per 3 bytes) and a few fields."""
        return -(-self.max_bytes // 3) * 4 + self.max_request_bytes

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Defaults overridden by NSFW_* variables; unknown NSFW_* names are refused (typos)."""
        known = {PREFIX + f.name.upper(): f for f in fields(cls)}
        for name in environ:
            if name.startswith(PREFIX) and name not in known:
                raise ConfigError(f"{name} is not a known setting")
        values: dict[str, Any] = {}
        for var, f in known.items():
            if var not in environ:
                continue
            parse = _PARSERS[f.name] if f.name in _PARSERS else _parser_for(f.type)
            try:
                values[f.name] = parse(environ[var].strip())
            except ValueError as exc:
                shown = "(hidden)" if f.name in _SECRETS else repr(environ[var])
                raise ConfigError(f"{var}={shown}: {exc}") from None
        return replace(cls(), **values).validate()

    @property
    def limits_redis(self) -> str:
        """The Redis the rate limits and the sign-in limits count in (NSFW_RATE_LIMIT_STORAGE, else
        NSFW_REDIS_URL); empty: the instance's SQLite file."""
        return self.rate_limit_storage or self.redis_url

    def _cross_checks(self) -> list[tuple[str, bool, str]]:
        """Rows (field, ok, why) of what needs fields of more than one group."""
        return [
            (
                "second_tier_model",
                not self.second_tier_model or self.second_tier_model in self.served_models,
                "must be NSFW_MODEL or one of NSFW_MODELS",
            ),
            (
                "review",
                not self.review or any("review" in key.scopes for key in self.api_keys),
                "needs a key with the review scope in NSFW_API_KEYS (the queue holds images)",
            ),
        ]

    def validate(self) -> Settings:
        """Return self, or raise ConfigError naming the NSFW_* variable that is wrong."""
        checks = [row for group in GROUPS for row in group._checks(self)] + self._cross_checks()
        # The first wrong value in the fields' order is the one named (NSFW_REVIEW's missing review
        # key before its secret key, as an operator sets them).
        order = {f.name: position for position, f in enumerate(fields(self))}
        for name, ok, why in sorted(checks, key=lambda row: order[row[0]]):
            if not ok:
                shown = "(hidden)" if name in _SECRETS else repr(getattr(self, name))
                raise ConfigError(f"{PREFIX}{name.upper()}={shown}: {why}")
        return self


# The groups Settings is made of, each checking its own values (Settings.validate).
GROUPS = (
    RuntimeSettings,
    FetchSettings,
    DecodeSettings,
    VideoSettings,
    FlowSettings,
    VerdictSettings,
    BatchSettings,
    WebSettings,
    CompatSettings,
    CacheSettings,
    StoreSettings,
    ReviewSettings,
    MatchSettings,
)


_REASON_CODE = re.compile(r"[a-z0-9_]{1,40}")


def _split(raw: str) -> list[str]:
    return [part.strip() for part in raw.split(",") if part.strip()]


def _parse_rate_limit(raw: str) -> str:
    """raw, when it is empty or limits in Flask-Limiter's notation (`10/second;100/day`); else ValueError."""
    if not raw:
        return raw
    from limits import parse_many

    try:
        parse_many(raw)
    except ValueError as exc:
        raise ValueError(f"not limits like 120/minute;5000/day ({exc})") from None
    return raw


def _parse_networks(raw: str) -> tuple[IPNetwork, ...]:
    # strict=False: "10.1.2.3/8" means 10.0.0.0/8, as an operator would expect.
    return tuple(ipaddress.ip_network(part, strict=False) for part in _split(raw))


def _parse_proxies(raw: str) -> tuple[IPNetwork, ...]:
    # strict: a trusted range is a security decision; "10.1.2.3/8" is more likely a typo than 10.0.0.0/8.
    return tuple(ipaddress.ip_network(part) for part in _split(raw))


_HEADER_NAME = re.compile(r"[A-Za-z0-9-]{1,64}")
_WEBHOOK_SECRET = re.compile(r"whsec_[A-Za-z0-9+/]{32,88}={0,2}")
# postgresql:// and postgres:// (as App Platform's ${db.DATABASE_URL} and Heroku give them) mean psycopg 3.
DATABASE_SCHEMES = ("sqlite:///", "postgresql+psycopg://", "postgresql://", "postgres://")


def _parse_ports(raw: str) -> tuple[int, ...]:
    return tuple(parse_int(part) for part in _split(raw))


# Settings whose values are never echoed, in an error or anywhere else.
# (A Redis URI or a database URL may hold a password.)
_SECRETS = frozenset(
    {
        "api_keys",
        "metrics_token",
        "rate_limit_storage",
        "database_url",
        "review_webhook_secret",
        "secret_key",
        "redis_url",
    }
)

_PARSERS: dict[str, Callable[[str], Any]] = {
    "allowed_networks": _parse_networks,
    "allowed_ports": _parse_ports,
    "trusted_proxies": _parse_proxies,
    "models_dir": Path,
    "models": lambda raw: tuple(_split(raw)),
    "compat": lambda raw: tuple(dict.fromkeys(_split(raw.lower()))),  # a name given twice counts once
    "compat_open": lambda raw: tuple(dict.fromkeys(_split(raw.lower()))),
    "review_reasons": lambda raw: tuple(dict.fromkeys(_split(raw.lower()))),
    "compat_pictrs_unknown": str.lower,
    "compat_pictrs_on_error": str.lower,
    "compat_nsfw_api_score": str.lower,
    "private_detector_path": lambda raw: Path(raw) if raw else None,
    "log_level": str.upper,
    "log_format": str.lower,
    "api_keys": parse_api_keys,
    "rate_limit": _parse_rate_limit,
    "instance_dir": lambda raw: Path(raw) if raw else None,
    "data_dir": Path,
}


def _parse_bool(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


def _parser_for(annotation: Any) -> Callable[[str], Any]:
    # Field annotations are strings under `from __future__ import annotations`.
    return {"int": parse_int, "float": parse_float, "str": str, "bool": _parse_bool}[str(annotation)]
