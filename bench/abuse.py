"""Volume-and-time abuse of the deployed service, measured: slow clients, big bodies, slow upstreams,
keep-alive imbalance and floods, each from outside against `gunicorn app:app` on one core.

    .venv/bin/python -m bench.abuse [--checkout DIR] [--seconds 10] [--json out.json]

`--checkout` runs the service from another work tree (e.g. `git worktree add /tmp/before <commit>`), so
one command measures before and after. The service runs as deployed (its gunicorn.conf.py,
WEB_CONCURRENCY=2) under `taskset -c 0`; the image host and the load run on CPU 1. Loopback only, every
loop bounded in time. Scenarios (the load issue's red-team classes):

- slow_headers: 64 connections dripping header bytes (one every 0.5 s) and 200 idle ones, while
  /health is probed every 50 ms and a prediction is asked every 200 ms;
- big_bodies: 16 concurrent maximal `image_base64` bodies (10 MiB images, 14 MB of JSON), peak RSS of
  every process of the service;
- slow_upstreams: caller A asks 2 predictions a second of a URL that drips until the download
  deadline, caller B (another loopback address) one every 100 ms of a fast image: B's success rate;
- slow_host_same_caller: one caller (one address) asks 2 predictions a second of slow-dripping URLs
  on one host (127.0.0.1) and one every 100 ms of a fast image on another (localhost, which the
  fetcher resolves to loopback itself; downloads are grouped by the URL's host name): the fast
  images' success rate;
- keepalive_c8: 8 keep-alive clients against 4, requests/s and 503s;
- base64_flood: small base64 bodies at 10 times the measured capacity (open loop, 64 senders), /health
  p50/p99.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import itertools
import json
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from bench.harness import (
    REPO,
    QuietHandler,
    Service,
    free_port,
    image_server,
    percentile,
    pin_load,
    serve_in_thread,
    write_json,
)
from bench.load import TreeMemory

CALLER_B = "127.0.0.2"


def _health_watch(service: Service, stop_at: float) -> Callable[[], dict[str, float]]:
    samples: list[tuple[int, float]] = []

    def run() -> None:
        while time.monotonic() < stop_at:
            samples.append(service.ask("GET", "/health", timeout=3))
            time.sleep(0.05)

    thread = threading.Thread(target=run)
    thread.start()

    def result() -> dict[str, float]:
        thread.join()
        seconds = [s for _, s in samples]
        return {
            "health_n": len(samples),
            "health_failed": sum(1 for status, _ in samples if status != 200),
            "health_p50_ms": round(percentile(seconds, 0.5) * 1000, 1),
            "health_p99_ms": round(percentile(seconds, 0.99) * 1000, 1),
        }

    return result


def slow_headers(service: Service, image: str, seconds: float) -> dict[str, Any]:
    idle = [socket.create_connection(("127.0.0.1", service.port)) for _ in range(200)]
    drippers = [socket.create_connection(("127.0.0.1", service.port)) for _ in range(64)]
    stop_at = time.monotonic() + seconds

    def drip(sock: socket.socket) -> None:
        for byte in b"POST /predict HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1000:
            if time.monotonic() > stop_at:
                return
            try:
                sock.send(bytes([byte]))
            except OSError:
                return
            time.sleep(0.5)

    threads = [threading.Thread(target=drip, args=(s,)) for s in drippers]
    for t in threads:
        t.start()
    health = _health_watch(service, stop_at)
    predictions = []
    while time.monotonic() < stop_at:
        predictions.append(service.ask("POST", f"/predict?url={image}", timeout=5)[0])
        time.sleep(0.2)
    for t in threads:
        t.join()
    for sock in idle + drippers:
        sock.close()
    return {**health(), "predictions": len(predictions), "predictions_ok": predictions.count(200)}


def _maximal_body() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 120, 90)).save(out, "JPEG")
    data = out.getvalue()
    data += b"\0" * (10 * 1024 * 1024 - 1 - len(data))  # NSFW_MAX_BYTES, less one: no base64 padding
    return json.dumps({"image_base64": base64.b64encode(data).decode()}).encode()


def big_bodies(service: Service, image: str, seconds: float) -> dict[str, Any]:
    body = _maximal_body()
    statuses: list[int] = []
    with TreeMemory(service.proc.pid) as memory:
        memory.window()
        threads = [
            threading.Thread(target=lambda: statuses.append(service.ask("POST", "/predict", body, timeout=60)[0]))
            for _ in range(16)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        peaks = memory.window().summary(service.proc.pid)
    return {"statuses": {str(s): statuses.count(s) for s in sorted(set(statuses))}, **peaks}


def slow_upstreams(service: Service, slow: str, fast: str, seconds: float) -> dict[str, Any]:
    stop_at = time.monotonic() + seconds
    attacker: list[int] = []
    other: list[int] = []
    threads = []

    def attack() -> None:
        attacker.append(service.ask("POST", f"/predict?url={slow}")[0])

    while time.monotonic() < stop_at:  # caller A: 2 slow URLs a second, each its own request
        for _ in range(2):
            threads.append(threading.Thread(target=attack))
            threads[-1].start()
        for _ in range(10):  # caller B meanwhile: one fast prediction every 100 ms
            other.append(service.ask("POST", f"/predict?url={fast}", source=CALLER_B, timeout=15)[0])
            time.sleep(0.1)
    for t in threads:
        t.join()
    return {
        "other_caller_ok_pct": round(100 * other.count(200) / max(len(other), 1), 1),
        "other_caller_n": len(other),
        "slow_caller": {str(s): attacker.count(s) for s in sorted(set(attacker))},
    }


def slow_host_same_caller(service: Service, slow: str, fast: str, seconds: float) -> dict[str, Any]:
    """Paced on the clock, not by the answers: a slow URL every 0.5 s, a fast image every 0.1 s."""
    started = time.monotonic()
    stop_at = started + seconds
    slow_answers: list[int] = []
    fast_answers: list[int] = []
    fast_sent: list[float] = []
    threads = []

    def ask_slow(url: str) -> None:
        slow_answers.append(service.ask("POST", f"/predict?url={url}")[0])

    def launch_slow() -> None:  # each a new URL: no download shared with the one before
        for number in itertools.count():
            due = started + number * 0.5
            if due >= stop_at:
                return
            time.sleep(max(0.0, due - time.monotonic()))
            threads.append(threading.Thread(target=ask_slow, args=(f"{slow}%3Fn%3D{number}",)))
            threads[-1].start()

    launcher = threading.Thread(target=launch_slow)
    launcher.start()
    for number in itertools.count():  # the same caller meanwhile: a fast image from the other host
        due = started + number * 0.1
        if due >= stop_at:
            break
        time.sleep(max(0.0, due - time.monotonic()))
        fast_sent.append(time.monotonic() - started)
        fast_answers.append(service.ask("POST", f"/predict?url={fast}", timeout=15)[0])
    launcher.join()
    for t in threads:
        t.join()
    by_second: dict[int, list[int]] = {}  # the fast images' success rate in each 2 s of the run
    for sent, status in zip(fast_sent, fast_answers, strict=True):
        by_second.setdefault(int(sent // 2) * 2, []).append(status)
    return {
        "fast_host_ok_pct": round(100 * fast_answers.count(200) / max(len(fast_answers), 1), 1),
        "fast_host_n": len(fast_answers),
        "fast_host_ok_pct_by_2s": {str(s): round(100 * a.count(200) / len(a)) for s, a in by_second.items()},
        "fast_host": {str(s): fast_answers.count(s) for s in sorted(set(fast_answers))},
        "slow_host": {str(s): slow_answers.count(s) for s in sorted(set(slow_answers))},
    }


def _keepalive(service: Service, image: str, clients: int, seconds: float) -> tuple[float, int, int]:
    stop_at = time.monotonic() + seconds
    statuses: list[int] = []

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", service.port, timeout=20)
        while time.monotonic() < stop_at:
            try:
                connection.request("POST", f"/predict?url={image}")
                response = connection.getresponse()
                response.read()
                statuses.append(response.status)
            except OSError:
                statuses.append(0)
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", service.port, timeout=20)
        connection.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    return statuses.count(200) / elapsed, statuses.count(503), len(statuses) - statuses.count(200)


def keepalive_c8(service: Service, image: str, seconds: float) -> dict[str, Any]:
    rps4, _, failed4 = _keepalive(service, image, 4, seconds)
    rps8, refused8, failed8 = _keepalive(service, image, 8, seconds)
    return {
        "c4_rps": round(rps4, 1),
        "c4_failed": failed4,
        "c8_rps": round(rps8, 1),
        "c8_503": refused8,
        "c8_failed": failed8,
        "c8_over_c4_pct": round(100 * rps8 / rps4, 1) if rps4 else 0.0,
    }


def base64_flood(service: Service, image_bytes: bytes, seconds: float, times: float = 10.0) -> dict[str, Any]:
    """Open loop: first the capacity (4 closed-loop senders, 3 s), then `times` that rate of requests."""
    body = json.dumps({"image_base64": base64.b64encode(image_bytes).decode()}).encode()
    measured: list[int] = []
    stop_at = time.monotonic() + 3

    def closed() -> None:
        while time.monotonic() < stop_at:
            measured.append(service.ask("POST", "/predict", body, timeout=10)[0])

    senders = [threading.Thread(target=closed) for _ in range(4)]
    for t in senders:
        t.start()
    for t in senders:
        t.join()
    capacity = measured.count(200) / 3
    rate = capacity * times
    answers: list[int] = []
    started = time.monotonic()
    stop_at = started + seconds
    ticket = iter(range(10**9))
    lock = threading.Lock()

    def flood() -> None:  # each sender takes the next slot of the schedule, waits for it, sends
        while True:
            with lock:
                due = started + next(ticket) / rate
            if due > stop_at:
                return
            time.sleep(max(0.0, due - time.monotonic()))
            answers.append(service.ask("POST", "/predict", body, timeout=10)[0])

    threads = [threading.Thread(target=flood) for _ in range(64)]
    for t in threads:
        t.start()
    health = _health_watch(service, stop_at)
    for t in threads:
        t.join()
    return {
        **health(),
        "capacity_rps": round(capacity, 1),
        "target_rps": round(rate, 1),
        "flood_rps": round(len(answers) / seconds, 1),
        "flood_statuses": {str(s): answers.count(s) for s in sorted(set(answers))},
    }


def run(checkout: Path, venv: Path, seconds: float, only: list[str], extra: dict[str, str]) -> dict[str, Any]:
    pin_load()
    with image_server(str(venv / "bin" / "python")) as image_base:
        image_port = int(image_base.rsplit(":", 1)[1])
        image = f"{image_base}/jpeg_1000x750"
        slow_port = free_port()
        slow_server = _drip_server(slow_port)
        slow = f"http://127.0.0.1:{slow_port}/slow.jpg"
        results: dict[str, Any] = {}
        small = io.BytesIO()
        Image.new("RGB", (160, 120), (90, 140, 200)).save(small, "JPEG")
        scenarios: list[tuple[str, dict[str, str], Callable[[Service], dict[str, Any]]]] = [
            ("slow_headers", {}, lambda s: slow_headers(s, image, seconds)),
            ("big_bodies", {}, lambda s: big_bodies(s, image, seconds)),
            (
                "slow_upstreams",
                {"NSFW_ALLOWED_PORTS": f"80,443,{image_port},{slow_port}"},
                lambda s: slow_upstreams(s, slow, image, seconds),
            ),
            (
                "slow_host_same_caller",
                {"NSFW_ALLOWED_PORTS": f"80,443,{image_port},{slow_port}"},
                lambda s: slow_host_same_caller(s, slow, image.replace("127.0.0.1", "localhost", 1), seconds),
            ),
            ("keepalive_c8", {}, lambda s: keepalive_c8(s, image, seconds)),
            ("base64_flood", {}, lambda s: base64_flood(s, small.getvalue(), seconds)),
        ]
        try:
            for name, env, scenario in scenarios:
                if only and name not in only:
                    continue
                with Service(checkout, venv, image_port, {**extra, **env}) as service:
                    results[name] = scenario(service)
                print(name, json.dumps(results[name]), flush=True)
        finally:
            slow_server.shutdown()
    return results


def _drip_server(port: int) -> Any:
    """An upstream that drips one byte every 0.1 s of a 100 kB body: past any download deadline."""

    class Drip(QuietHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", "100000")
            self.end_headers()
            try:
                for _ in range(100000):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.1)
            except OSError:
                pass

    return serve_in_thread(Drip, port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", type=Path, default=REPO, help="work tree to serve from (default: this one)")
    parser.add_argument("--venv", type=Path, default=REPO / ".venv-serve", help="virtualenv with the serving set")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--only", action="append", default=[], help="run this scenario (repeatable)")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the service (repeatable)")
    args = parser.parse_args(argv)
    extra = dict(item.split("=", 1) for item in args.env)
    results = run(args.checkout.resolve(), args.venv.resolve(), args.seconds, args.only, extra)
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
