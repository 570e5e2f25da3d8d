"""Hostile images and requests against the deployed service, measured from outside (issue 13's must-show).

    .venv/bin/python -m bench.hostile [--checkout DIR] [--timeout 60] [--json out.json]

The service runs as deployed (`gunicorn app:app`, its gunicorn.conf.py, WEB_CONCURRENCY=2) under
`taskset -c 0`; a loopback image host in this process (on CPU 1) serves the bomb classes of
scripts/hostile_images.py, made here (none is committed). `--checkout` serves another work tree
(`git worktree add /tmp/before <commit>`), so one command measures before and after; for such a
tree run one part per command (`--only`), each with a service of its own.

- each file class, one request at a time: status and code, wall seconds, the CPU seconds the workers
  spent (from /proc), the peak RSS of the busiest worker (the kernel's high-water marks are reset
  before each request); the JPEG of repeated scans comes last, since before the scan limit its
  decode outlived the request and held its worker;
- four requests of each class at once: the peak RSS of all the service's processes together;
- batches: one URL named 32 times (fetches, most connections at once), 32 distinct URLs on one host
  (most connections at once), 16 base64 copies of a 373 KB repeated-scan JPEG (seconds, against the
  20 s batch deadline);
- the HTTP side: deep JSON on /predict and /predict/batch, a bad chunk size, a 2,048-character URL
  percent-encoded (status and content type).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from bench.harness import (
    REPO,
    SERVICE_CPU,
    QuietHandler,
    Service,
    percentile,
    pin_load,
    serve_in_thread,
    status_kb,
    write_json,
)
from bench.load import TreeMemory
from scripts import hostile_images as bombs

TICKS = os.sysconf("SC_CLK_TCK")

FILES: dict[str, Callable[[], bytes]] = {
    "gif canvas growth (2 frames)": bombs.gif_growing_canvas,
    "gif canvas growth (6 frames)": lambda: bombs.gif_growing_canvas(frames=6),
    "mpo 8x8 + 40 MP entries": bombs.mpo_big_entries,
    "png 16-bit grey 40 MP": bombs.png16_grey,
    "webp 40 MP": bombs.webp_big,
    "webp 130,000 lossy frames": bombs.webp_many_frames,
    "apng 3000 frames 4 MP": bombs.apng_many_frames,
    "bmp rle8 2.5 M runs": bombs.bmp_rle8,
    "bmp rle8 1,000 end of lines 40 MP": bombs.bmp_rle8_eol,
    "bmp rle4 255-pixel runs 40 MP": bombs.bmp_rle4_runs,
    "png 873,790 empty chunks": bombs.png_many_chunks,
    # Legitimate files at the limits, for what the largest accepted images cost.
    "accepted: webp 16.7 MP": lambda: bombs.webp_big(4096, 4096),
    "accepted: jpeg 40 MP": lambda: bombs.jpeg_flat(8000, 5000),
    "accepted: progressive jpeg 24 MP": lambda: bombs.jpeg_flat(6000, 4000, progressive=True),
    # Last: before the scan limit it held its worker for minutes after the client gave up, and every
    # later request that worker took waited for it.
    "jpeg repeated scans 10 MiB": bombs.jpeg_repeated_scans,
}


class ImageHost:
    """Loopback image host: serves bytes by path, counts hits and the connections open at once."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.hits: list[str] = []
        self.open_now = self.open_most = 0
        lock = threading.Lock()
        host = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                with lock:
                    host.hits.append(self.path)
                    host.open_now += 1
                    host.open_most = max(host.open_most, host.open_now)
                try:
                    body = host.files.get(self.path.split("?", 1)[0])
                    if body is None:
                        self.send_response(404)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(200)
                    self.send_header("Content-Type", "image/jpeg")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    time.sleep(float(host.files.get("/delay", b"0")))
                    self.wfile.write(body)
                except OSError:
                    pass
                finally:
                    with lock:
                        host.open_now -= 1

        self.server = serve_in_thread(Handler)
        self.port = self.server.server_address[1]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def reset(self) -> None:
        self.hits.clear()
        self.open_most = 0


def _cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICKS


def _post(service: Service, path: str, body: bytes | None, timeout: float, content_type: str = "") -> dict[str, Any]:
    started = time.monotonic()
    connection = http.client.HTTPConnection("127.0.0.1", service.port, timeout=timeout)
    try:
        headers = {"Content-Type": content_type} if content_type else {}
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        payload = response.read()
        try:
            answer = json.loads(payload)
        except ValueError:
            answer = {}
        code = answer.get("error", {}).get("code") if isinstance(answer, dict) else None
        return {
            "status": response.status,
            "code": code,
            "type": response.getheader("Content-Type"),
            "seconds": round(time.monotonic() - started, 2),
            "answer": answer,
        }
    except (OSError, http.client.HTTPException) as exc:
        return {"status": 0, "code": type(exc).__name__, "seconds": round(time.monotonic() - started, 2)}
    finally:
        connection.close()


def _path(name: str) -> str:
    return "/" + name.replace(" ", "_").replace(",", "").replace(":", "") + ".img"


def one_at_a_time(service: Service, host: ImageHost, timeout: float) -> dict[str, Any]:
    results = {}
    for name in FILES:
        path = _path(name)
        data = host.files[path]
        with TreeMemory(service.proc.pid) as memory:
            workers = service.workers()
            memory.window()
            cpu = _cpu_seconds(workers)
            answer = _post(service, "/predict?url=" + quote(host.url(path), safe=""), None, timeout)
            spent = _cpu_seconds(workers) - cpu
            peaks = memory.window().summary(service.proc.pid)
        answer.pop("answer", None)
        results[name] = {
            "bytes": len(data),
            **answer,
            "cpu_s": round(spent, 2),
            "worker_peak_mb": peaks["worker_peak_mb"],
        }
        print(name, json.dumps(results[name]), flush=True)
        time.sleep(0.5)  # let a worker that was killed for its timeout be replaced
    return results


def four_at_once(service: Service, host: ImageHost, timeout: float) -> dict[str, Any]:
    results = {}
    for name in FILES:
        path = _path(name)
        answers: list[dict[str, Any]] = []

        def ask(path: str = path, answers: list[dict[str, Any]] = answers) -> None:
            answers.append(_post(service, "/predict?url=" + quote(host.url(path), safe=""), None, timeout))

        with TreeMemory(service.proc.pid) as memory:
            memory.window()
            threads = [threading.Thread(target=ask) for _ in range(4)]
            started = time.monotonic()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            peaks = memory.window().summary(service.proc.pid)
        results[name] = {
            "statuses": sorted(a["status"] for a in answers),
            "seconds": round(time.monotonic() - started, 2),
            "total_peak_mb": peaks["total_peak_mb"],
        }
        print("4x", name, json.dumps(results[name]), flush=True)
        time.sleep(0.5)
    return results


def batches(service: Service, host: ImageHost, timeout: float) -> dict[str, Any]:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (640, 480), (120, 60, 30)).save(out, "JPEG")
    host.files["/photo.jpg"] = out.getvalue()
    host.files["/delay"] = b"0.2"
    results: dict[str, Any] = {}

    def fetched(items: list[dict[str, str]]) -> dict[str, Any]:
        host.reset()
        answer = _post(service, "/predict/batch", json.dumps({"items": items}).encode(), timeout, "application/json")
        return {
            "status": answer["status"],
            "seconds": answer["seconds"],
            "fetches": len(host.hits),
            "most_connections_at_once": host.open_most,
        }

    results["one url 32 times"] = fetched([{"url": host.url("/photo.jpg")}] * 32)
    results["32 distinct urls on one host"] = fetched([{"url": host.url(f"/photo.jpg?n={n}")} for n in range(32)])
    del host.files["/delay"]
    workers = service.workers()
    # The 373 KB file (23,000 scans), and one of 9,000 scans: under NSFW_MAX_JPEG_SCANS=10000
    # (--env) only the batch deadline and the decode deadline stop the second.
    for name, size in (("16 base64 repeated-scan jpegs", 373_000), ("16 base64 jpegs of 9,000 scans", 150_000)):
        bomb = base64.b64encode(bombs.jpeg_repeated_scans(size, (2048, 2048))).decode()
        body = json.dumps({"items": [{"image_base64": bomb}] * 16}).encode()
        cpu = _cpu_seconds(workers)
        answer = _post(service, "/predict/batch", body, timeout, "application/json")
        codes = sorted({r.get("error", {}).get("code", "ok") for r in answer.get("answer", {}).get("results", [])})
        results[name] = {
            "status": answer["status"],
            "seconds": answer["seconds"],
            "cpu_s": round(_cpu_seconds(workers) - cpu, 2),
            "codes": codes,
        }
    for name, result in results.items():
        print(name, json.dumps(result), flush=True)
    return results


def _raw(service: Service, data: bytes) -> tuple[int, str]:
    with socket.create_connection(("127.0.0.1", service.port), timeout=10) as sock:
        sock.sendall(data)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except OSError:
            pass
    head = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    kind = next((line.split(":", 1)[1].strip() for line in head if line.lower().startswith("content-type:")), "")
    return (int(head[0].split()[1]) if head[0] else 0), kind


def http_side(service: Service) -> dict[str, Any]:
    deep = b"[" * 100_000 + b"]" * 100_000
    url = "http://images.invalid/" + "a" * (2048 - len("http://images.invalid/"))
    encoded = "".join(f"%{b:02X}" for b in url.encode())
    cases = {
        "deep json /predict": b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(deep)}\r\nConnection: close\r\n\r\n".encode()
        + deep,
        "deep json /predict/batch": b"POST /predict/batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(deep)}\r\nConnection: close\r\n\r\n".encode()
        + deep,
        "bad chunk size": b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
        "2048-character url, percent-encoded": f"GET /predict?url={encoded} HTTP/1.1\r\nHost: x\r\n"
        "Connection: close\r\n\r\n".encode(),
    }
    results = {}
    for name, data in cases.items():
        status, kind = _raw(service, data)
        results[name] = {"status": status, "type": kind}
        print(name, json.dumps(results[name]), flush=True)
    return results


def _subprocess_decode(data: bytes) -> Any:
    import io

    from nsfw.imaging.budget import Limits
    from nsfw.imaging.recipes import preprocess_frames
    from nsfw.model.specs import MOBILENET_V2

    inputs, _ = preprocess_frames(
        io.BytesIO(data),
        spec=MOBILENET_V2,
        resize="nsfwjs",
        limits=Limits(),
        max_frames=8,
        deadline=time.monotonic() + 5,
    )
    return inputs


def _median_ms(run_once: Callable[[], object], count: int) -> float:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        run_once()
        times.append(time.perf_counter() - started)
    return round(percentile(times, 0.5) * 1e3, 2)


def decode_options(count: int = 30) -> dict[str, Any]:
    """What each way of bounding a decode costs, on this process's CPU (pinned to one core): the
    pre-parse that prices a file, the deadline checks, and a decode in a forkserver subprocess (the
    only way to stop a C decoder mid-frame) against one in the thread, for a 1000x750 photo."""
    import io
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from bench.imageserver import make_images
    from nsfw.errors import ImageTooComplex
    from nsfw.imaging import budget
    from nsfw.imaging.budget import Limits
    from nsfw.imaging.recipes import preprocess_frames
    from nsfw.model.specs import MOBILENET_V2

    photo = make_images()["jpeg_1000x750"]
    scans = bombs.jpeg_repeated_scans()
    frames = bombs.webp_many_frames()
    runs = bombs.bmp_rle8()
    chunks = bombs.png_many_chunks()

    def read_chunks() -> None:
        with contextlib.suppress(ImageTooComplex):  # refused by the count itself
            budget.read_layout(chunks, "PNG")

    def thread(deadline: float | None) -> Callable[[], object]:
        return lambda: preprocess_frames(
            io.BytesIO(photo),
            spec=MOBILENET_V2,
            resize="nsfwjs",
            limits=Limits(),
            max_frames=8,
            deadline=None if deadline is None else time.monotonic() + deadline,
        )

    result: dict[str, Any] = {
        "pre-parse photo (ms)": _median_ms(lambda: budget.read_layout(photo, "JPEG"), count),
        "pre-parse 10 MiB of repeated scans (ms)": _median_ms(lambda: budget.read_layout(scans, "JPEG"), 5),
        "pre-parse 10 MB webp of 130,000 frames (ms)": _median_ms(lambda: budget.read_layout(frames, "WEBP"), 5),
        "pre-parse 5 MB rle8 bmp of 2.5 M runs (ms)": _median_ms(lambda: budget.read_layout(runs, "BMP"), 5),
        "pre-parse 10 MiB png of 873,790 chunks (ms)": _median_ms(read_chunks, 5),
        "decode in the thread, no deadline (ms)": _median_ms(thread(None), count),
        "decode in the thread, deadline checks (ms)": _median_ms(thread(5.0), count),
    }
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("forkserver")) as pool:
        pool.submit(_subprocess_decode, photo).result()  # started and warm
        result["decode in a forkserver subprocess (ms)"] = _median_ms(
            lambda: pool.submit(_subprocess_decode, photo).result(), count
        )
        rss = sum(status_kb(child.pid, "VmRSS") for child in multiprocessing.active_children())
        result["forkserver pool process rss (MB)"] = round(rss / 1024, 1)
    for name, value in result.items():
        print(name, value, flush=True)
    return result


def run(checkout: Path, venv: Path, timeout: float, only: list[str], env: dict[str, str]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    if only == ["options"]:
        os.sched_setaffinity(0, {int(SERVICE_CPU)})
        return {"options": decode_options()}
    pin_load()
    host = ImageHost()
    for name, make in FILES.items():
        host.files[_path(name)] = make()
    # gunicorn's own worker timeout is 60 s: a request past it costs the worker, not only the request.
    service = Service(checkout, venv, host.port, env)
    parts: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("one_at_a_time", lambda: one_at_a_time(service, host, timeout)),
        ("four_at_once", lambda: four_at_once(service, host, timeout)),
        ("batches", lambda: batches(service, host, timeout)),
        ("http", lambda: http_side(service)),
    ]
    try:
        for name, part in parts:
            if not only or name in only:
                results[name] = part()
    finally:
        service.close()
        host.server.shutdown()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", type=Path, default=REPO, help="work tree to serve from (default: this one)")
    parser.add_argument("--venv", type=Path, default=REPO / ".venv-serve", help="virtualenv with the serving set")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds a client waits for each answer")
    parser.add_argument(
        "--only", action="append", default=[], help="one_at_a_time, four_at_once, batches, http; or options alone"
    )
    parser.add_argument("--file", action="append", default=[], help="only this file class (repeatable)")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the service (repeatable)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    if args.file:
        for name in [name for name in FILES if name not in args.file]:
            del FILES[name]
    env = dict(item.split("=", 1) for item in args.env)
    results = run(args.checkout.resolve(), args.venv.resolve(), args.timeout, args.only, env)
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
