"""Faults, with nothing lost: the review queue measured from outside while a worker is killed, the
database stops and the disk fills, on SQLite and on PostgreSQL.

    .venv/bin/python -m bench.faults [--items 120] [--json out.json] [--only kill9] [--keep-logs DIR]
    ./scripts/bench faults [...]

Each fault gets a fresh service and store: `gunicorn app:app` as deployed (gunicorn.conf.py, its
migrations, WEB_CONCURRENCY=2) from .venv-serve, pinned to CPU 0 (bench.harness.Service), with the
review queue on, 16 moderator keys and a webhook receiver. Loopback only, every wait bounded.

1. `--items` images the model leaves unknown (strict per-request thresholds) are queued, each a
   distinct body (bench.imageserver.with_counter on one flat JPEG).
2. 16 moderators decide them at once, paced over `--decide-seconds`: moderators m and m + 8 take the
   same items in the same order (the items dealt round-robin to 8 pairs), so every item is raced by
   two, with different labels; a 5xx or a broken connection is retried until a deadline, a 409
   already_decided means the other won. Meanwhile a prediction of a new image every 200 ms
   (`detail=true`, so it would be queued) and /health every 100 ms.
3. `--fault-at` seconds into the deciding, the fault: baseline (none); kill9 (SIGKILL to a worker,
   a child of the arbiter, that holds a decision's connection at that moment, found from /proc);
   pg_stop (`pg_ctl -m fast stop` of the PostgreSQL cluster, `--outage` seconds, then started again
   on the same port); disk_full (the SQLite data folder on a 64 MiB tmpfs, or a loop-mounted ext4
   where tmpfs cannot be mounted, filled by a filler file for `--outage` seconds, then the filler
   removed; the output names the method).
4. Then, bounded by `--drain-seconds` (above the webhook lease, 70 s, that a killed worker leaves on
   the message it was sending): until the outbox has nothing pending and the receiver has heard every
   decided item; 3 s more for late repeats.

Per fault: answered (decisions answered 200), stored (of those, in `GET /reviews/export` with the same
moderator and label; the missing ones are listed), delivered (decided items heard as review.decided),
duplicated (webhook-ids heard more than once; items heard under more than one webhook-id are listed
too), predictions answered 200 of all (how many with `review.error`), /health failures (a probe whose
connection the killed worker held when SIGKILL came dies with it, and is listed apart), and recovered:
without a restart of the arbiter, a new unknown image is queued again, the export answers, every item
ended decided, the outbox drained and every decision was heard. A table goes to stdout, everything to `--json`.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import http.server
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from bench.harness import REPO, QuietHandler, Service, pin_load, serve_in_thread, write_json
from bench.imageserver import with_counter
from scripts.hostile_images import jpeg_flat
from tests.servers import PostgresServer, _postgres_bin

MODERATORS = 16
PAIRS = MODERATORS // 2  # moderators m and m + PAIRS decide the same items
WORKERS = 2
# Thresholds this strict leave any image unknown: the model decides nothing, every item goes to a human.
STRICT = "detail=true&adult_threshold=0.9999&safe_threshold=0.9999"
FAULTS = ("baseline", "kill9", "pg_stop", "disk_full")
STORES = {"baseline": "sqlite", "kill9": "sqlite", "pg_stop": "postgresql", "disk_full": "sqlite"}
SMALL_DISK = "64m"
SETTLE_SECONDS = 3.0  # after the drain: repeats that come late are still heard


def call(
    port: int,
    method: str,
    path: str,
    token: str = "",
    body: Any = None,
    timeout: float = 20,
    in_flight: set[int] | None = None,
    ports: list[int] | None = None,
) -> tuple[int, Any]:
    """(status, parsed JSON or raw bytes); status 0 when the connection failed or timed out. While the
    request is out, its connection's local port is in `in_flight` (to find the worker that holds it);
    `ports` keeps it for good (to tell afterwards whether a killed worker held it)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    local = 0
    try:
        connection.connect()
        if connection.sock is not None:
            local = connection.sock.getsockname()[1]
        if in_flight is not None and local:
            in_flight.add(local)
        if ports is not None:
            ports.append(local)
        connection.request(method, path, body=data, headers=headers)
        response = connection.getresponse()
        raw = response.read()
        status = response.status
    except (OSError, http.client.HTTPException):
        return 0, b""
    finally:
        if in_flight is not None:
            in_flight.discard(local)
        connection.close()
    if response.getheader("Content-Type", "").startswith("application/json"):
        with contextlib.suppress(ValueError):
            return status, json.loads(raw)
    return status, raw


def held_by(service_port: int, pid: int) -> set[int]:
    """The loopback client ports of the connections to the service that worker `pid` has accepted."""
    by_inode = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            local, remote = int(fields[1].split(":")[1], 16), int(fields[2].split(":")[1], 16)
            if local == service_port:
                by_inode[f"socket:[{fields[9]}]"] = remote
    held = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target in by_inode:
                    held.add(by_inode[target])
    return held


def holders(service_port: int, client_ports: set[int], workers: list[int]) -> dict[int, int]:
    """Worker pid -> how many of the connections from these loopback client ports it has accepted:
    the connections' socket inodes from /proc/net/tcp, found among each worker's open files."""
    inodes = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            local, remote = int(fields[1].split(":")[1], 16), int(fields[2].split(":")[1], 16)
            if local == service_port and remote in client_ports:
                inodes.add(f"socket:[{fields[9]}]")
    held = {}
    for pid in workers:
        count = 0
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    count += os.readlink(fd) in inodes
        held[pid] = count
    return held


def _code(answer: Any) -> str:
    return answer.get("error", {}).get("code", "") if isinstance(answer, dict) else ""


@dataclass
class Heard:
    webhook_id: str
    type: str
    review_id: str
    label: str
    moderator: str
    at: float = field(default_factory=time.monotonic)


class Peer:
    """The image host and the webhook receiver, one threaded server on loopback: `GET /img/<n>` is a
    flat JPEG with n in a comment (a body of its own, the same pixels); `POST /hook` always answers
    200 and records what it heard, its signature checked."""

    def __init__(self, secret: str) -> None:
        image = jpeg_flat(64, 48)
        self.heard: list[Heard] = []
        self.bad_signatures = 0
        self._lock = threading.Lock()
        verifier = Webhook(secret)
        peer = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                match = re.fullmatch(r"/img/(\d+)", self.path)
                if match is None:
                    self.send_error(404)
                    return
                body = with_counter(image, int(match.group(1)))
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                headers = {name.lower(): value for name, value in self.headers.items()}
                try:
                    payload = verifier.verify(raw, headers)
                except WebhookVerificationError:
                    with peer._lock:
                        peer.bad_signatures += 1
                    payload = json.loads(raw)
                data = payload.get("data", {})
                heard = Heard(
                    headers.get("webhook-id", ""),
                    payload.get("type", ""),
                    data.get("id", ""),
                    data.get("label", ""),
                    data.get("moderator", ""),
                )
                with peer._lock:
                    peer.heard.append(heard)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        class Server(http.server.ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                if not isinstance(sys.exc_info()[1], ConnectionError):  # a killed worker's keep-alive
                    super().handle_error(request, client_address)

        self.server = serve_in_thread(Handler, server_class=Server)
        self.port = int(self.server.server_address[1])
        self.base = f"http://127.0.0.1:{self.port}"

    def decided(self) -> list[Heard]:
        with self._lock:
            return [heard for heard in self.heard if heard.type == "review.decided"]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Postgres(PostgresServer):
    """tests.servers.PostgresServer, and a stop and a start of the same cluster (an outage)."""

    def stop_cluster(self) -> None:
        self._run(_postgres_bin("pg_ctl"), "-D", str(self._data), "-m", "fast", "-w", "stop")

    def start_cluster(self) -> None:
        # The options it was started with, as the postmaster wrote them (pg_ctl restart reads them too).
        args = shlex.split((self._data / "postmaster.opts").read_text())[1:]
        at = args.index("-D")
        options = shlex.join(args[:at] + args[at + 2 :])
        self._run(
            _postgres_bin("pg_ctl"), "-D", str(self._data), "-o", options, "-l", str(self.folder / "log"), "-w", "start"
        )


class SmallDisk:
    """A small filesystem mounted at a folder, to be filled: tmpfs, else a loop-mounted ext4 file."""

    def __init__(self, folder: Path, scratch: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.method = ""
        tried = []
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={SMALL_DISK},mode=0755", "tmpfs", str(folder)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if done.returncode == 0:
            self.method = f"tmpfs size={SMALL_DISK}"
            return
        tried.append(f"tmpfs: {done.stderr.strip()}")
        image = scratch / "disk.img"
        with image.open("wb") as out:
            out.truncate(64 * 1024 * 1024)
        for args in (
            ["mkfs.ext4", "-q", "-F", "-m", "0", str(image)],
            ["mount", "-o", "loop", str(image), str(folder)],
        ):
            done = subprocess.run(args, capture_output=True, text=True, timeout=60)
            if done.returncode:
                tried.append(f"{args[0]}: {done.stderr.strip()}")
                raise RuntimeError("no small filesystem could be mounted: " + "; ".join(tried))
        self.method = "loop-mounted ext4, 64 MiB (tmpfs refused: " + tried[0] + ")"

    def fill(self) -> dict[str, Any]:
        """A filler file takes every free byte: 1 MiB writes until ENOSPC, then 4 KiB ones, then 512 B."""
        filler = self.folder / "filler"
        written = 0
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            for size in (1 << 20, 4096, 512):
                chunk = b"\0" * size
                while True:
                    try:
                        written += os.write(fd, chunk)
                    except OSError:
                        break
            with contextlib.suppress(OSError):
                os.fsync(fd)
        finally:
            os.close(fd)
        free = os.statvfs(self.folder)
        return {"filler_mb": round(written / 2**20, 1), "free_bytes_after": free.f_bavail * free.f_frsize}

    def empty(self) -> None:
        (self.folder / "filler").unlink(missing_ok=True)

    def close(self) -> None:
        done = subprocess.run(["umount", str(self.folder)], capture_output=True, timeout=30)
        if done.returncode:
            subprocess.run(["umount", "-l", str(self.folder)], capture_output=True, timeout=30)


@dataclass
class Keys:
    """The service's keys: `app` queues the items, `probe` asks the running predictions, mod0..mod15
    decide (the moderator is the key's name)."""

    app: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    probe: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    moderators: dict[str, str] = field(
        default_factory=lambda: {f"mod{m}": secrets.token_urlsafe(32) for m in range(MODERATORS)}
    )

    def env(self) -> str:
        entries = [f"app:{self.app}", f"probe:{self.probe}"]
        entries += [f"{name}:{token}:review" for name, token in self.moderators.items()]
        return ",".join(entries)


class Background:
    """The running traffic beside the deciding: a new image to predict every 200 ms, /health every 100 ms."""

    def __init__(self, port: int, peer: Peer, token: str, start: float) -> None:
        self.port, self.peer, self.token, self.start = port, peer, token, start
        self.stop = threading.Event()
        self.predictions: list[tuple[float, int, str]] = []  # (t, status, review state: queued | error code | -)
        self.health: list[tuple[float, int, int]] = []  # (t, status, the probe's local port)
        # The probes' connections a worker killed with SIGKILL held at that moment: those die with
        # it, by the fault's own nature (no server can answer on a connection whose process is gone).
        self.lost_with_worker: set[int] = set()
        self._threads = [threading.Thread(target=self._predict), threading.Thread(target=self._health)]
        for thread in self._threads:
            thread.start()

    def _predict(self) -> None:
        n = 1_000_000
        while not self.stop.is_set():
            n += 1
            started = time.monotonic()
            url = quote(f"{self.peer.base}/img/{n}", safe="")
            status, answer = call(self.port, "POST", f"/predict?url={url}&{STRICT}", self.token, timeout=20)
            review = answer.get("review", {}) if isinstance(answer, dict) else {}
            state = "-"
            if "error" in review:
                state = review["error"].get("code", "error")
            elif review.get("status") == "pending":
                state = "queued"
            self.predictions.append((round(started - self.start, 2), status, state))
            self.stop.wait(max(0.0, 0.2 - (time.monotonic() - started)))

    def _health(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            ports: list[int] = []
            status, _ = call(self.port, "GET", "/health", timeout=3, ports=ports)
            self.health.append((round(started - self.start, 2), status, ports[0] if ports else 0))
            self.stop.wait(max(0.0, 0.1 - (time.monotonic() - started)))

    def finish(self) -> dict[str, Any]:
        self.stop.set()
        for thread in self._threads:
            thread.join()
        failed_predictions = [(t, s) for t, s, _ in self.predictions if s != 200]
        errors = Counter(state for _, s, state in self.predictions if s == 200 and state not in ("queued", "-"))
        failed_health = [(t, s) for t, s, port in self.health if s != 200 and port not in self.lost_with_worker]
        lost_health = [(t, s) for t, s, port in self.health if s != 200 and port in self.lost_with_worker]
        return {
            "predictions": len(self.predictions),
            "predictions_200": sum(1 for _, s, _ in self.predictions if s == 200),
            "predictions_review_error": sum(errors.values()),
            "review_error_codes": dict(errors),
            "predictions_failed": failed_predictions[:20],
            "review_error_window_s": _window([t for t, s, st in self.predictions if s == 200 and st in errors]),
            "health": len(self.health),
            "health_failures": len(failed_health),
            "health_failed": failed_health[:20],
            "health_lost_with_killed_worker": lost_health,
        }


def _window(times: list[float]) -> list[float] | None:
    return [min(times), max(times)] if times else None


class Deciding:
    """16 moderators deciding the queued items at once, paced over `seconds`, retrying 5xx and broken
    connections until `deadline` (monotonic)."""

    def __init__(self, port: int, keys: Keys, items: list[str], seconds: float, deadline: float) -> None:
        self.port, self.keys, self.items, self.deadline = port, keys, items, deadline
        self.start = time.monotonic()
        self.answered: dict[str, tuple[str, str, float]] = {}  # id -> (moderator, label, t) of its 200
        self.double: list[tuple[str, str, str]] = []  # an item answered 200 twice: (id, first, second)
        self.already: list[tuple[str, str]] = []  # 409 already_decided: (id, moderator)
        self.retried = Counter[str]()  # status (0: no answer) -> retries
        self.other = Counter[str]()  # any other answer, by status and code
        self.unresolved: list[tuple[str, str]] = []  # still failing at the deadline: (id, moderator)
        self.in_flight: set[int] = set()  # local ports of the decisions on their way
        self._lock = threading.Lock()
        names = list(keys.moderators)
        plans = {m: [i for i in range(len(items)) if i % PAIRS == m % PAIRS] for m in range(MODERATORS)}
        steps = max(len(plan) for plan in plans.values()) or 1
        self.interval = seconds / steps
        self._threads = [threading.Thread(target=self._moderate, args=(m, names[m], plans[m])) for m in plans]
        for thread in self._threads:
            thread.start()

    def _moderate(self, m: int, name: str, plan: list[int]) -> None:
        token = self.keys.moderators[name]
        offset = (m % PAIRS) * self.interval / PAIRS  # the pairs take turns; a pair's two go together
        for step, index in enumerate(plan):
            due = self.start + offset + step * self.interval
            time.sleep(max(0.0, due - time.monotonic()))
            review_id = self.items[index]
            label = ("adult", "safe")[(index + (m >= PAIRS)) % 2]  # the pair's two moderators disagree
            self._decide(review_id, name, token, label)

    def _decide(self, review_id: str, name: str, token: str, label: str) -> None:
        pause = 0.2
        while True:
            path = f"/reviews/{review_id}/decision"
            status, answer = call(
                self.port, "POST", path, token, {"label": label}, timeout=15, in_flight=self.in_flight
            )
            with self._lock:
                if status == 200:
                    t = round(time.monotonic() - self.start, 2)
                    if review_id in self.answered:
                        self.double.append((review_id, self.answered[review_id][0], name))
                    else:
                        self.answered[review_id] = (name, label, t)
                    return
                if status == 409 and _code(answer) == "already_decided":
                    self.already.append((review_id, name))
                    return
                if status and status < 500:
                    self.other[f"{status} {_code(answer)}"] += 1
                    return
                self.retried[str(status)] += 1
                if time.monotonic() > self.deadline:
                    self.unresolved.append((review_id, name))
                    return
            time.sleep(pause)
            pause = min(pause * 1.5, 1.0)

    def join(self) -> None:
        for thread in self._threads:
            thread.join()


def queue_items(port: int, peer: Peer, token: str, count: int, deadline: float) -> tuple[list[str], Counter[str]]:
    """`count` unknown images queued (4 at a time): their review ids in order, and what else was answered."""
    ids: list[str | None] = [None] * count
    other = Counter[str]()
    lock = threading.Lock()
    numbers = iter(range(count))

    def work() -> None:
        while True:
            with lock:
                n = next(numbers, None)
            if n is None:
                return
            url = quote(f"{peer.base}/img/{n}", safe="")
            while time.monotonic() < deadline:
                status, answer = call(port, "POST", f"/predict?url={url}&{STRICT}", token)
                review = answer.get("review", {}) if isinstance(answer, dict) else {}
                if status == 200 and review.get("status") == "pending":
                    ids[n] = review["id"]
                    break
                with lock:
                    other[f"{status} {_code(answer) or review.get('error', {}).get('code', '')}".strip()] += 1
                time.sleep(0.2)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [review_id for review_id in ids if review_id], other


def export(port: int, token: str) -> dict[str, dict[str, Any]] | None:
    """The decided items by id, from `GET /reviews/export?format=jsonl`; None when it did not answer."""
    status, raw = call(port, "GET", "/reviews/export?format=jsonl", token, timeout=30)
    if status != 200 or not isinstance(raw, bytes):
        return None
    rows = [json.loads(line) for line in raw.decode().splitlines() if line.strip()]
    return {row["id"]: row for row in rows}


def pending_webhooks(port: int, token: str) -> int | None:
    status, answer = call(port, "GET", "/reviews/webhooks?status=pending", token)
    return len(answer["deliveries"]) if status == 200 and isinstance(answer, dict) else None


def log_summary(text: str, limit: int = 12) -> dict[str, Any]:
    """The service log's warnings and errors, alike ones counted together (numbers and ids masked)."""
    masked = Counter[str]()
    tracebacks = text.count("Traceback (most recent call last)")
    for line in text.splitlines():
        if not re.search(r"\b(WARNING|ERROR|CRITICAL)\b|\[(WARNING|ERROR|CRITICAL)\]", line):
            continue
        line = re.sub(r"^.*?\b(WARNING|ERROR|CRITICAL)\b\]?\s*", r"\1 ", line)
        line = re.sub(r"\[[0-9a-f]{16,}\]", "[…]", line)  # request ids
        line = re.sub(r"\b(rv|wh|msg)_[A-Za-z0-9]+", r"\1_…", line)
        line = re.sub(r"\d+(\.\d+)?", "N", line)
        masked[line[:220]] += 1
    return {"tracebacks": tracebacks, "warnings": [f"{n} × {line}" for line, n in masked.most_common(limit)]}


@dataclass
class Run:
    """One fault's run: its service, store and traffic, and what it measured."""

    fault: str
    store: str
    args: argparse.Namespace
    peer: Peer
    keys: Keys
    scratch: Path
    postgres: Postgres | None = None
    disk: SmallDisk | None = None
    service: Service | None = None
    background: Background | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def port(self) -> int:
        assert self.service is not None
        return self.service.port

    def workers(self) -> list[int]:
        assert self.service is not None
        return sorted(self.service.workers())

    def apply_fault(self, deciding: Deciding) -> None:
        """The fault, at its time; what it did and when (seconds since the deciding began) in info."""

        def at() -> float:
            return round(time.monotonic() - deciding.start, 2)

        if self.fault == "kill9":
            # The victim is a worker that holds a decision at that moment (its request read or being
            # answered), found from /proc; the first worker if none does within 5 s.
            before = self.workers()
            victim, held = before[0], 0
            waited = time.monotonic() + 5
            while time.monotonic() < waited:
                counts = holders(self.port, set(deciding.in_flight), before)
                pid, count = max(counts.items(), key=lambda pair: pair[1])
                if count:
                    victim, held = pid, count
                    break
                time.sleep(0.002)
            held_probes = held_by(self.port, victim)
            os.kill(victim, signal.SIGKILL)
            if self.background is not None:
                self.background.lost_with_worker |= held_probes
            self.info["fault_info"] = {"killed_worker": victim, "decisions_it_held": held, "at_s": at()}
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                now = self.workers()
                if len(now) >= WORKERS and victim not in now:
                    self.info["fault_info"] |= {"respawned": sorted(set(now) - set(before)), "lifted_s": at()}
                    break
                time.sleep(0.05)
        elif self.fault == "pg_stop":
            assert self.postgres is not None
            self.postgres.stop_cluster()
            self.info["fault_info"] = {"stopped_s": at()}
            time.sleep(self.args.outage)
            self.postgres.start_cluster()
            self.info["fault_info"] |= {"lifted_s": at()}
        elif self.fault == "disk_full":
            assert self.disk is not None
            self.info["fault_info"] = {"method": self.disk.method, **self.disk.fill(), "filled_s": at()}
            time.sleep(self.args.outage)
            self.disk.empty()
            self.info["fault_info"] |= {"lifted_s": at()}

    def _fault(self, deciding: Deciding) -> None:
        try:
            self.apply_fault(deciding)
        except Exception as exc:  # noqa: BLE001 - said in the result, and the run is not recovered
            self.info["fault_error"] = f"{type(exc).__name__}: {exc}"[:1000]

    def setup(self) -> None:
        env = {
            "NSFW_REVIEW": "true",
            "NSFW_API_KEYS": self.keys.env(),
            "NSFW_SECRET_KEY": secrets.token_urlsafe(30),
            "NSFW_REVIEW_WEBHOOK_URL": f"{self.peer.base}/hook",
            "NSFW_REVIEW_WEBHOOK_SECRET": self.args.webhook_secret,
        }
        if self.store == "postgresql":
            assert self.postgres is not None
            env["NSFW_DATABASE_URL"] = self.postgres.database(f"faults_{self.fault}_{os.getpid()}")
        else:
            data = self.scratch / "data"
            if self.fault == "disk_full":
                self.disk = SmallDisk(data, self.scratch)
            env["NSFW_DATA_DIR"] = str(data)
        self.service = Service(REPO, self.args.venv, self.peer.port, env)
        deadline = time.monotonic() + 60
        while len(self.workers()) < WORKERS and time.monotonic() < deadline:  # both booted, not just one
            time.sleep(0.1)

    def measure(self) -> dict[str, Any]:
        args, keys = self.args, self.keys
        assert self.service is not None
        arbiter = self.service.proc.pid
        workers_at_start = self.workers()
        items, queue_other = queue_items(self.port, self.peer, keys.app, args.items, time.monotonic() + 120)
        moderator = next(iter(keys.moderators.values()))
        outage = args.outage if self.fault in ("pg_stop", "disk_full") else 0.0
        start = time.monotonic()
        background = self.background = Background(self.port, self.peer, keys.probe, start)
        deciding = Deciding(self.port, keys, items, args.decide_seconds, start + args.decide_seconds + outage + 60)
        fault = None
        if self.fault != "baseline":
            time.sleep(args.fault_at)
            fault = threading.Thread(target=self._fault, args=(deciding,))
            fault.start()
        deciding.join()
        if fault is not None:
            fault.join()
        decided_s = round(time.monotonic() - start, 1)
        # Every item decided and sent: the outbox empty and the receiver has heard each decision.
        drain_deadline = time.monotonic() + args.drain_seconds
        stored: dict[str, dict[str, Any]] | None = None
        pending: int | None = None
        while time.monotonic() < drain_deadline:
            pending = pending_webhooks(self.port, moderator)
            stored = export(self.port, moderator) or stored
            heard = {heard.review_id for heard in self.peer.decided()}
            if pending == 0 and stored is not None and set(stored) <= heard:
                break
            time.sleep(0.5)
        drained_s = round(time.monotonic() - start, 1)
        time.sleep(SETTLE_SECONDS)
        final = export(self.port, moderator)
        stored = final or stored or {}
        pending = pending_webhooks(self.port, moderator)
        # Recovered without a restart: a new unknown image is queued again, the service is the same one.
        status, answer = call(
            self.port, "POST", f"/predict?url={quote(self.peer.base + '/img/2000000', safe='')}&{STRICT}", keys.app
        )
        queued_again = (
            status == 200 and isinstance(answer, dict) and answer.get("review", {}).get("status") == "pending"
        )
        traffic = background.finish()
        return self._count(
            items=items,
            queue_other=queue_other,
            deciding=deciding,
            stored=stored,
            pending=pending,
            traffic=traffic,
            queued_again=queued_again,
            exported=final is not None,
            same_arbiter=self.service.proc.poll() is None and self.service.proc.pid == arbiter,
            workers=(workers_at_start, self.workers()),
            times={"decided_s": decided_s, "drained_s": drained_s},
        )

    def _count(
        self,
        *,
        items: list[str],
        queue_other: Counter[str],
        deciding: Deciding,
        stored: dict[str, dict[str, Any]],
        pending: int | None,
        traffic: dict[str, Any],
        queued_again: bool,
        exported: bool,
        same_arbiter: bool,
        workers: tuple[list[int], list[int]],
        times: dict[str, float],
    ) -> dict[str, Any]:
        ours = set(items)
        decided = {review_id: row for review_id, row in stored.items() if review_id in ours}
        answered = deciding.answered
        missing = sorted(set(answered) - set(decided))
        mismatched = [
            (review_id, f"answered {moderator}/{label}", f"stored {kept['decided_by']}/{kept['label']}")
            for review_id, (moderator, label, _) in answered.items()
            if (kept := decided.get(review_id)) is not None
            and (kept["decided_by"], kept["label"]) != (moderator, label)
        ]
        heard = self.peer.decided()
        by_webhook = Counter(h.webhook_id for h in heard)
        ids_by_item: dict[str, set[str]] = {}
        for h in heard:
            ids_by_item.setdefault(h.review_id, set()).add(h.webhook_id)
        wrong_payload = [
            h.review_id
            for h in heard
            if (kept := decided.get(h.review_id)) is not None
            and (h.label, h.moderator) != (kept["label"], kept["decided_by"])
        ]
        undelivered = sorted(set(decided) - set(ids_by_item))
        first_heard: dict[str, float] = {}
        for h in heard:
            first_heard[h.review_id] = min(h.at, first_heard.get(h.review_id, h.at))
        latency = {  # the 200 to the first copy heard, in seconds
            review_id: round(first_heard[review_id] - deciding.start - t, 2)
            for review_id, (_, _, t) in answered.items()
            if review_id in first_heard
        }
        lost_answers = [  # a 409 for the moderator whose own decision it was: its 200 never arrived
            (review_id, name)
            for review_id, name in deciding.already
            if review_id not in answered and decided.get(review_id, {}).get("decided_by") == name
        ]
        undecided = sorted(ours - set(decided))
        recovered = {
            "same_arbiter": same_arbiter,
            "workers": len(workers[1]) >= WORKERS,
            "queued_again": queued_again,
            "export_answered": exported,
            "all_decided": not undecided and len(items) == self.args.items,
            "outbox_drained": pending == 0,
            "all_heard": not undelivered,
            "fault_applied_and_lifted": "fault_error" not in self.info,
        }
        return {
            "fault": self.fault,
            "store": self.store,
            "items": len(items),
            "queue_other": dict(queue_other),
            "answered": len(answered),
            "stored": len(set(answered) & set(decided)) - len(mismatched),
            "missing": missing,
            "mismatched": mismatched,
            "double_200": deciding.double,
            "decided": len(decided),
            "undecided": undecided,
            "already_decided_409": len(deciding.already),
            "answer_lost_but_stored": lost_answers,
            "retried": dict(deciding.retried),
            "other_answers": dict(deciding.other),
            "unresolved": deciding.unresolved,
            "delivered": len(set(ids_by_item) & set(decided)),
            "undelivered": undelivered,
            "delivery_s_max": max(latency.values(), default=None),
            "late_deliveries": sorted(((rid, s) for rid, s in latency.items() if s > 10), key=lambda p: -p[1]),
            "webhooks_heard": len(heard),
            "duplicated": sum(n - 1 for n in by_webhook.values() if n > 1),
            "duplicated_ids": {  # webhook-id -> the item and when each copy was heard (s since the deciding began)
                wid: [h.review_id, *(round(h.at - deciding.start, 2) for h in heard if h.webhook_id == wid)]
                for wid, n in by_webhook.items()
                if n > 1
            },
            "items_heard_under_two_ids": sorted(rid for rid, wids in ids_by_item.items() if len(wids) > 1),
            "heard_not_decided": sorted(set(ids_by_item) - set(decided)),
            "wrong_payload": wrong_payload,
            "bad_signatures": self.peer.bad_signatures,
            "outbox_pending_at_end": pending,
            **traffic,
            "recovered": all(recovered.values()),
            "recovery": recovered,
            "workers": {"at_start": workers[0], "at_end": workers[1]},
            **times,
            **self.info,
        }

    def close(self) -> dict[str, Any]:
        """Stop the service (its log summarised and kept where asked), then unmount."""
        summary: dict[str, Any] = {}
        try:
            if self.service is not None:
                stop_service = self.service
                with contextlib.suppress(OSError):
                    text = stop_service.log_text()
                    summary = log_summary(text)
                    if self.args.keep_logs:
                        self.args.keep_logs.mkdir(parents=True, exist_ok=True)
                        (self.args.keep_logs / f"{self.fault}-gunicorn.log").write_text(text)
                stop_service.close()
        finally:
            if self.disk is not None:
                self.disk.close()
        return summary


def _quietly(close: Callable[[], object]) -> None:
    """A cleanup that fails says so and lets the others run."""
    try:
        close()
    except Exception as exc:  # noqa: BLE001
        print(f"cleanup: {type(exc).__name__}: {exc}"[:500], file=sys.stderr)


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """SIGTERM runs the cleanups, as Ctrl-C does."""

    def raise_exit(*_: object) -> None:
        raise SystemExit(143)

    previous = signal.signal(signal.SIGTERM, raise_exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(args: argparse.Namespace, report: Callable[[dict[str, Any]], None]) -> list[dict[str, Any]]:
    if (os.cpu_count() or 1) > 1:
        pin_load()  # the service has CPU 0 (bench.harness.Service)
    args.webhook_secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    results: list[dict[str, Any]] = []
    with contextlib.ExitStack() as cleanup, _sigterm_unwinds():
        scratch_root = Path(tempfile.mkdtemp(prefix="nsfw-faults-"))
        cleanup.callback(shutil.rmtree, scratch_root, ignore_errors=True)
        peer = Peer(args.webhook_secret)
        cleanup.callback(peer.close)
        postgres: Postgres | None = None
        for fault in args.only or FAULTS:
            store = STORES[fault]
            if store == "postgresql" and postgres is None:
                postgres = Postgres()
                cleanup.callback(_quietly, postgres.stop)
            peer.heard.clear()
            peer.bad_signatures = 0
            scratch = scratch_root / fault
            scratch.mkdir()
            one = Run(fault, store, args, peer, Keys(), scratch, postgres=postgres)
            started = time.monotonic()
            log: dict[str, Any] = {}
            try:
                one.setup()
                result = one.measure()
            except Exception as exc:  # noqa: BLE001 - one fault's failure is reported, the others still run
                result = {"fault": fault, "store": store, "error": f"{type(exc).__name__}: {exc}"[:2000], **one.info}
            finally:
                log = one.close()
            result |= {"seconds": round(time.monotonic() - started, 1), "log": log}
            results.append(result)
            report(result)
    return results


COLUMNS = (
    ("fault", 10),
    ("store", 10),
    ("answered", 8),
    ("stored", 6),
    ("missing", 7),
    ("delivered", 9),
    ("duplicated", 10),
    ("predictions 200/total (review.error)", 36),
    ("/health failures", 16),
    ("recovered", 9),
)


def row(result: dict[str, Any]) -> str:
    if "error" in result:
        return f"{result['fault']:<10} {result['store']:<10} failed: {result['error']}"
    predictions = f"{result['predictions_200']}/{result['predictions']} ({result['predictions_review_error']})"
    values = (
        result["fault"],
        result["store"],
        result["answered"],
        result["stored"],
        len(result["missing"]),
        f"{result['delivered']}/{result['decided']}",
        result["duplicated"],
        predictions,
        f"{result['health_failures']}/{result['health']}",
        "yes" if result["recovered"] else "no",
    )
    return " ".join(f"{value!s:<{width}}" for value, (_, width) in zip(values, COLUMNS, strict=True))


def details(result: dict[str, Any]) -> list[str]:
    """The lines under a row: the fault's timing, and anything lost, doubled or odd."""
    if "error" in result:
        return []
    lines = [
        f"  items {result['items']}, decided {result['decided']}, 409 already_decided {result['already_decided_409']}, "
        f"retried {result['retried'] or 0}, deciding {result['decided_s']} s, drained at {result['drained_s']} s, "
        f"slowest webhook {result['delivery_s_max']} s after its 200, run {result['seconds']} s"
    ]
    if "fault_info" in result:
        lines.append(f"  fault: {json.dumps(result['fault_info'])}")
    if "fault_error" in result:
        lines.append(f"  the fault itself failed: {result['fault_error']}")
    if result["review_error_codes"]:
        lines.append(f"  review.error: {result['review_error_codes']} between {result['review_error_window_s']} s")
    if result["predictions_failed"]:
        lines.append(f"  predictions not 200 (t s, status): {result['predictions_failed']}")
    if result["health_failed"]:
        lines.append(f"  /health not 200 (t s, status): {result['health_failed']}")
    if lost := result["health_lost_with_killed_worker"]:
        lines.append(f"  /health on the killed worker's own connections (t s, status): {lost}")
    for key in (
        "missing",
        "mismatched",
        "double_200",
        "undecided",
        "unresolved",
        "answer_lost_but_stored",
        "undelivered",
        "late_deliveries",
        "duplicated_ids",
        "items_heard_under_two_ids",
        "heard_not_decided",
        "wrong_payload",
        "other_answers",
        "queue_other",
    ):
        if result[key]:
            lines.append(f"  {key}: {result[key]}")
    if result["bad_signatures"]:
        lines.append(f"  bad signatures: {result['bad_signatures']}")
    if not result["recovered"]:
        lines.append(f"  not recovered: {[name for name, ok in result['recovery'].items() if not ok]}")
    for warning in result["log"].get("warnings", [])[:8]:
        lines.append(f"  log: {warning}")
    if result["log"].get("tracebacks"):
        lines.append(f"  log: {result['log']['tracebacks']} tracebacks")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=120, help="items queued and decided per fault")
    parser.add_argument("--decide-seconds", type=float, default=20.0, help="the deciding is paced over this")
    parser.add_argument("--fault-at", type=float, default=6.0, help="seconds into the deciding")
    parser.add_argument("--outage", type=float, default=10.0, help="seconds PostgreSQL is down, the disk full")
    parser.add_argument("--drain-seconds", type=float, default=100.0, help="most to wait for the webhooks after")
    parser.add_argument("--only", action="append", choices=FAULTS, default=[], help="this fault (repeatable)")
    parser.add_argument("--venv", type=Path, default=REPO / ".venv-serve", help="virtualenv with the serving set")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--keep-logs", type=Path, help="copy each run's gunicorn log into this folder")
    args = parser.parse_args(argv)
    args.venv = args.venv.resolve()
    print(" ".join(f"{name:<{width}}" for name, width in COLUMNS), flush=True)

    def report(result: dict[str, Any]) -> None:
        print(row(result), flush=True)
        for line in details(result):
            print(line, flush=True)

    started = time.monotonic()
    results = run(args, report)
    print(f"total {time.monotonic() - started:.0f} s", flush=True)
    write_json(args.json, {"results": results})
    clean = all(
        "error" not in r and not r["missing"] and not r["mismatched"] and not r["double_200"] and r["recovered"]
        for r in results
    )
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
