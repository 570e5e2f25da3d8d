"""Load generation and process measurement for bench.serve: keep-alive HTTP clients on threads,
percentiles, and the resident memory of a process tree read from /proc."""

from __future__ import annotations

import http.client
import itertools
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from bench.harness import children, status_kb


@dataclass(frozen=True)
class Sample:
    started: float
    seconds: float
    status: int


class Client:
    """One keep-alive connection, reopened after any failure."""

    def __init__(self, base: str, timeout: float = 60.0) -> None:
        split = urlsplit(base)
        self._address = (split.hostname or "127.0.0.1", split.port or 80)
        self._timeout = timeout
        self._conn: http.client.HTTPConnection | None = None

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> Sample:
        started = time.perf_counter()
        try:
            if self._conn is None:
                self._conn = http.client.HTTPConnection(*self._address, timeout=self._timeout)
            self._conn.request(method, path, body=body, headers=headers or {})
            response = self._conn.getresponse()
            response.read()
            status = response.status
            if response.will_close:
                self.close()
        except (OSError, http.client.HTTPException):
            self.close()
            status = 0
        return Sample(started, time.perf_counter() - started, status)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


# What one request sends: path, body and headers (a POST, unless the caller names another method).
Request = tuple[str, bytes | None, dict[str, str]]


def sequential(base: str, make: Callable[[], Request], count: int, method: str = "POST") -> list[Sample]:
    client = Client(base)
    try:
        return [client.request(method, *make()) for _ in range(count)]
    finally:
        client.close()


def saturate(
    base: str,
    make: Callable[[], Request],
    concurrency: int,
    seconds: float,
    health_every: float = 0.05,
    method: str = "POST",
) -> tuple[list[Sample], list[Sample]]:
    """`concurrency` clients posting back to back for `seconds`, and one probing /health meanwhile."""
    stop_at = time.perf_counter() + seconds
    samples: list[Sample] = []
    health: list[Sample] = []

    def post() -> None:
        client = Client(base)
        while time.perf_counter() < stop_at:
            samples.append(client.request(method, *make()))
        client.close()

    def probe() -> None:
        client = Client(base)
        while time.perf_counter() < stop_at:
            health.append(client.request("GET", "/health"))
            time.sleep(health_every)
        client.close()

    threads = [threading.Thread(target=post) for _ in range(concurrency)] + [threading.Thread(target=probe)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return samples, health


def throughput(samples: list[Sample]) -> float:
    """Successful requests per second, over the span from the first start to the last end (the
    requests still running when a saturation run's time is up finish, and count, inside it)."""
    ok = [s for s in samples if s.status == 200]
    if not ok:
        return 0.0
    span = max(s.started + s.seconds for s in ok) - min(s.started for s in ok)
    return round(len(ok) / span, 1) if span > 0 else 0.0


def percentiles(samples: list[Sample]) -> dict[str, float]:
    """p50/p90/p99 in ms of the successful samples."""
    ok = [s.seconds * 1e3 for s in samples if s.status == 200]
    if not ok:
        return {"p50_ms": float("nan"), "p90_ms": float("nan"), "p99_ms": float("nan")}
    p50, p90, p99 = np.percentile(ok, [50, 90, 99])
    return {"p50_ms": round(float(p50), 2), "p90_ms": round(float(p90), 2), "p99_ms": round(float(p99), 2)}


def by_url(image_url: str) -> Callable[[], Request]:
    """POST /predict?url= for one image whose URL differs on every call (?n=1, 2, ...)."""
    numbers = itertools.count(1)
    return lambda: ("/predict?url=" + image_url + f"%3Fn%3D{next(numbers)}", None, {})


def by_batch(image_url: str, size: int) -> Callable[[], Request]:
    """POST /predict/batch of `size` URL items, every URL different."""
    numbers = itertools.count(1)

    def make() -> Request:
        items = [{"url": f"{image_url}?n={next(numbers)}"} for _ in range(size)]
        return "/predict/batch", json.dumps({"items": items}).encode(), {"Content-Type": "application/json"}

    return make


def by_upload(varied: Callable[[int], bytes], kind: str) -> Callable[[], Request]:
    """POST /predict with the image itself: a raw image/* body, or a multipart field `image`."""
    numbers = itertools.count(1)

    def make() -> Request:
        data = varied(next(numbers))
        if kind == "raw":
            return "/predict", data, {"Content-Type": "image/jpeg"}
        boundary = "benchboundary7f3a"
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n'
                "Content-Type: image/jpeg\r\n\r\n"
            ).encode()
            + data
            + f"\r\n--{boundary}--\r\n".encode()
        )
        return "/predict", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}

    return make


@dataclass
class Peaks:
    by_pid: dict[int, int] = field(default_factory=dict)
    total_kb: int = 0

    def summary(self, root: int) -> dict[str, float]:
        workers = [kb for pid, kb in self.by_pid.items() if pid != root]
        return {
            "master_peak_mb": round(self.by_pid.get(root, 0) / 1024, 1),
            "worker_peak_mb": round(max(workers, default=0) / 1024, 1),
            "total_peak_mb": round(self.total_kb / 1024, 1),
        }


@dataclass
class TreeMemory:
    """Peak RSS of a process and its children (gunicorn's arbiter and workers): sampled every 50 ms
    and completed with each process's own high-water mark (VmHWM), over the whole watch and over
    windows that `window()` starts (it resets the kernel's high-water marks through clear_refs)."""

    root: int
    overall: Peaks = field(default_factory=Peaks)
    current: Peaks = field(default_factory=Peaks)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> TreeMemory:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def window(self) -> Peaks:
        """Start a new window; returns the one that ended."""
        with self._lock:
            self._sample()
            ended, self.current = self.current, Peaks()
            for pid in [self.root, *children(self.root)]:
                try:
                    Path(f"/proc/{pid}/clear_refs").write_text("5")  # 5: reset VmHWM to VmRSS
                except OSError:
                    pass
        return ended

    def _sample(self) -> None:
        total = 0
        for pid in [self.root, *children(self.root)]:
            rss = status_kb(pid, "VmRSS")
            peak = max(rss, status_kb(pid, "VmHWM"))
            for peaks in (self.overall, self.current):
                peaks.by_pid[pid] = max(peaks.by_pid.get(pid, 0), peak)
            total += rss
        for peaks in (self.overall, self.current):
            peaks.total_kb = max(peaks.total_kb, total)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            with self._lock:
                self._sample()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
