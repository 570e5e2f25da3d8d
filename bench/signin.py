"""Memory of concurrent moderator sign-ins with made-up names, measured: every process of the deployed
service (the arbiter and its workers) while 32 clients, each from its own loopback address, sign in
at once, round after round.

    .venv/bin/python -m bench.signin [--checkout DIR] [--clients 32] [--rounds 5] [--json out.json]

`--checkout` serves another work tree (e.g. `git worktree add /tmp/before <commit>`), so one command
measures before and after. The service runs as deployed (`gunicorn app:app`, its gunicorn.conf.py,
WEB_CONCURRENCY=2, from .venv-serve) under `taskset -c 0`, with the review queue on (SQLite in a
temporary NSFW_DATA_DIR, a key with the review scope, NSFW_SECRET_KEY) and no trusted proxies; the
clients run on CPU 1. Each round, every client GETs /review/login (its session cookie and the CSRF
token tied to it), then all POST together (a threading.Barrier) a name nobody has, so each sign-in
costs a password check against the dummy hash. The resident memory of every process is sampled every
10 ms (and each one's own high-water mark, VmHWM, read too): the idle total before, the peak total
during, each worker's peak and the statuses the sign-ins got (401 wrong name or password, 503 busy,
429 limited).
"""

from __future__ import annotations

import argparse
import http.client
import re
import secrets
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from bench.harness import REPO, Service, children, percentile, pin_load, status_kb, write_json
from bench.load import TreeMemory

SESSION_COOKIE = "nsfw_session"
# Must show: all processes of the service together under this during the sign-ins.
TARGET_TOTAL_MB = 700.0
_CSRF = re.compile(r'name="csrf_token"\s+value="([^"]+)"')


@dataclass
class TreeMemoryEvery(TreeMemory):
    """TreeMemory sampled every `every` seconds (10 ms: a burst of password checks lasts well under a
    second), its list of processes refreshed every half second rather than at each sample."""

    every: float = 0.01
    series: list[tuple[float, int]] = field(default_factory=list)  # (monotonic time, total kB)

    def _run(self) -> None:
        pids, listed = [self.root], 0.0
        while not self._stop.wait(self.every):
            if time.monotonic() - listed > 0.5:
                pids, listed = [self.root, *children(self.root)], time.monotonic()
            with self._lock:
                total = 0
                for pid in pids:
                    rss = status_kb(pid, "VmRSS")
                    for peaks in (self.overall, self.current):
                        peaks.by_pid[pid] = max(peaks.by_pid.get(pid, 0), rss)
                    total += rss
                for peaks in (self.overall, self.current):
                    peaks.total_kb = max(peaks.total_kb, total)
                self.series.append((time.monotonic(), total))


def _request(
    port: int, source: str, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, str, list[str], float]:
    """(status, body text, Set-Cookie headers, seconds); status 0 when the connection failed."""
    started = time.monotonic()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60, source_address=(source, 0))
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        text = response.read().decode("utf-8", "replace")
        return response.status, text, response.headers.get_all("Set-Cookie") or [], time.monotonic() - started
    except (OSError, http.client.HTTPException):
        return 0, "", [], time.monotonic() - started
    finally:
        connection.close()


def _form(port: int, source: str) -> tuple[str, str] | None:
    """GET /review/login: (session cookie, CSRF token), or None when the page did not come."""
    status, text, cookies, _ = _request(port, source, "GET", "/review/login")
    token = _CSRF.search(text)
    jar: SimpleCookie = SimpleCookie()
    for header in cookies:
        jar.load(header)
    if status != 200 or token is None or SESSION_COOKIE not in jar:
        return None
    return jar[SESSION_COOKIE].value, token.group(1)


def sign_ins(service: Service, clients: int, rounds: int) -> dict[str, Any]:
    """`rounds` rounds of `clients` sign-ins at once, each client from 127.0.0.(2 + its number)."""
    released: list[float] = []  # when each round's sign-ins were let go
    barrier = threading.Barrier(clients, action=lambda: released.append(time.monotonic()))
    statuses: list[int] = []
    by_round: list[list[int]] = [[] for _ in range(rounds)]
    seconds: list[float] = []
    lock = threading.Lock()

    def client(number: int) -> None:
        source = f"127.0.0.{2 + number}"
        for round_ in range(rounds):
            form = _form(service.port, source)
            name = f"nobody-{round_}-{number}-{secrets.token_hex(4)}"
            try:
                barrier.wait(timeout=60)
            except threading.BrokenBarrierError:
                return
            if form is None:
                with lock:
                    statuses.append(-1)  # no sign-in page to post
                    by_round[round_].append(-1)
                continue
            cookie, token = form
            body = urlencode({"username": name, "password": secrets.token_urlsafe(12), "csrf_token": token})
            headers = {"Content-Type": "application/x-www-form-urlencoded", "Cookie": f"{SESSION_COOKIE}={cookie}"}
            status, _, _, took = _request(service.port, source, "POST", "/review/login", body.encode(), headers)
            with lock:
                statuses.append(status)
                by_round[round_].append(status)
                seconds.append(took)

    with TreeMemoryEvery(service.proc.pid) as memory:
        time.sleep(0.5)
        memory.window()
        idle = {pid: status_kb(pid, "VmRSS") for pid in service.pids()}
        started = time.monotonic()
        threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - started
        time.sleep(0.2)
        during = memory.window()
        after = sum(status_kb(pid, "VmRSS") for pid in service.pids())
    ends = [*released[1:], float("inf")]  # a round: from its release to the next one's
    peak_by_round = [
        max((kb for at, kb in memory.series if start <= at < end), default=0)
        for start, end in zip(released, ends, strict=True)
    ]
    workers = sorted(pid for pid in during.by_pid if pid != service.proc.pid)
    ordered = sorted(seconds)
    return {
        "clients": clients,
        "rounds": rounds,
        "seconds": round(elapsed, 1),
        "idle_total_mb": round(sum(idle.values()) / 1024, 1),
        "peak_total_mb": round(during.total_kb / 1024, 1),
        "peak_total_mb_by_round": [round(kb / 1024, 1) for kb in peak_by_round],
        "after_total_mb": round(after / 1024, 1),
        # Each process's own peak, summed: a bound on the total even between two samples.
        "sum_of_process_peaks_mb": round(sum(during.by_pid.values()) / 1024, 1),
        "arbiter_peak_mb": round(during.by_pid.get(service.proc.pid, 0) / 1024, 1),
        "worker_peaks_mb": [round(during.by_pid[pid] / 1024, 1) for pid in workers],
        "worker_idle_mb": [round(idle.get(pid, 0) / 1024, 1) for pid in workers],
        "statuses": {str(s): statuses.count(s) for s in sorted(set(statuses))},
        "statuses_by_round": [{str(s): got.count(s) for s in sorted(set(got))} for got in by_round],
        "sign_in_p50_ms": round(percentile(ordered, 0.5) * 1000, 1) if ordered else None,
        "sign_in_max_ms": round(ordered[-1] * 1000, 1) if ordered else None,
        # Judged on the bound, which no sample can miss.
        "under_target": sum(during.by_pid.values()) / 1024 < TARGET_TOTAL_MB,
    }


def _environment(data_dir: str) -> dict[str, str]:
    """The review queue on, as a deployment has it; no trusted proxies (the socket's address counts)."""
    return {
        "NSFW_REVIEW": "true",
        "NSFW_DATA_DIR": data_dir,
        "NSFW_API_KEYS": f"mod:{secrets.token_urlsafe(32)}:review",
        "NSFW_SECRET_KEY": secrets.token_urlsafe(30),
    }


def run(checkout: Path, venv: Path, clients: int, rounds: int) -> dict[str, Any]:
    pin_load()
    with (
        tempfile.TemporaryDirectory(prefix="signin-data-") as data_dir,
        Service(checkout, venv, 443, _environment(data_dir)) as service,
    ):
        result = sign_ins(service, clients, rounds)
    return {"checkout": str(checkout), **result}


def print_table(result: dict[str, Any]) -> None:
    print(f"\n{result['checkout']}: {result['clients']} clients x {result['rounds']} rounds, {result['seconds']} s")
    print("| idle total | peak total (10 ms samples) | sum of process peaks | arbiter peak | workers, idle -> peak |")
    print("|---|---|---|---|---|")
    pairs = zip(result["worker_idle_mb"], result["worker_peaks_mb"], strict=True)
    workers = ", ".join(f"{idle:.0f} -> {peak:.0f}" for idle, peak in pairs)
    print(
        f"| {result['idle_total_mb']:.0f} MB | {result['peak_total_mb']:.0f} MB | "
        f"{result['sum_of_process_peaks_mb']:.0f} MB | {result['arbiter_peak_mb']:.0f} MB | {workers} MB |"
    )
    statuses = ", ".join(f"{status}: {n}" for status, n in result["statuses"].items())
    rounds = ", ".join(f"{mb:.0f}" for mb in result["peak_total_mb_by_round"])
    print(f"\npeak total by round: {rounds} MB; total after: {result['after_total_mb']:.0f} MB")
    print(
        "sign-ins by round:",
        "; ".join(", ".join(f"{s}: {n}" for s, n in r.items()) for r in result["statuses_by_round"]),
    )
    print(f"sign-ins: {statuses}; p50 {result['sign_in_p50_ms']} ms, max {result['sign_in_max_ms']} ms")
    met = "yes" if result["under_target"] else "NO"
    print(f"every process's peak, summed, under {TARGET_TOTAL_MB:.0f} MB: {met}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", type=Path, default=REPO, help="work tree to serve from (default: this one)")
    parser.add_argument("--venv", type=Path, default=REPO / ".venv-serve", help="virtualenv with the serving set")
    parser.add_argument("--clients", type=int, default=32, help="sign-ins at once, each from its own address")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    if not 1 <= args.clients <= 250:
        parser.error("--clients must be 1..250 (one loopback address each, 127.0.0.2 up)")
    result = run(args.checkout.resolve(), args.venv.resolve(), args.clients, args.rounds)
    print_table(result)
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
