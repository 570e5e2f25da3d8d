"""What a video costs on one core: time to answer, and the memory of every process, from loopback.

    ./scripts/bench video [--requests 7] [--seconds 60] [--before DIR] [--json out.json]

Two clips are made once (cached in .cache/bench-videos/, never committed): 60 s of 720p H.264 (24 fps,
a keyframe every 2 s) and 60 s of 1080p VP9 (12 fps, a keyframe every 2 s), a photo panning slowly, so
no frame is judged adult and every sample is decoded (the early stop never helps). gunicorn (2 workers,
pinned to the service CPU, as deployed) fetches them from a loopback host on the load CPU:
- p50 and max of `requests` sequential requests for each clip (`?url=`);
- the peak RSS of the arbiter, the workers and every decoder child, sampled every 10 ms, alone and
  with both clips asked at once (the 1 GB box's question: all of it under 700 MB?);
- the p50 of a 1000x750 JPEG before and after the videos, and, with --before DIR (a checkout without
  video), the same JPEG on that checkout in the same run: images must not get slower.
"""

from __future__ import annotations

import argparse
import http.server
import threading
import time
from pathlib import Path
from typing import Any

from PIL import Image

from bench.harness import (
    REPO,
    Gunicorn,
    QuietHandler,
    children,
    free_port_below_ephemeral,
    percentile,
    pin_load,
    serve_in_thread,
    service_env,
    status_kb,
    write_json,
)
from bench.imageserver import make_images

CLIPS = REPO / ".cache" / "bench-videos"
CORPUS = REPO / "tests" / "data" / "reference" / "corpus"


H264, VP9 = "h264_720p", "vp9_1080p"


def make_clips(seconds: int) -> dict[str, bytes]:
    """The two clips of `seconds`, made once (30 s for the 60 s pair on this machine), by name."""
    from scripts.hostile_videos import clip

    CLIPS.mkdir(parents=True, exist_ok=True)
    photo = Image.open(CORPUS / "rocket.jpg").convert("RGB").resize((2400, 1600), Image.Resampling.LANCZOS)
    wanted = {
        H264: {"codec": "h264", "container": "mp4", "size": (1280, 720), "fps": 24},
        VP9: {"codec": "vp9", "container": "webm", "size": (1920, 1080), "fps": 12},
    }
    made = {}
    for name, options in wanted.items():
        path = CLIPS / f"{name}_{seconds}s.{options['container']}"
        if not path.exists():
            width, height = options["size"]  # type: ignore[misc]

            def frame_at(t: float, width: int = width, height: int = height) -> Image.Image:
                x = int((2400 - width) * t / seconds)  # a slow pan over the photo
                return photo.crop((x, 100, x + width, 100 + height))

            fps = int(options["fps"])  # type: ignore[call-overload]
            path.write_bytes(clip(frame_at, seconds=seconds, gop=2 * fps, **options))  # type: ignore[arg-type]
        made[name] = path.read_bytes()
    return made


def _host(files: dict[str, bytes]) -> http.server.ThreadingHTTPServer:
    class Handler(QuietHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            data = files.get(self.path.lstrip("/").split("?", 1)[0])
            if data is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return serve_in_thread(Handler)


class Peak:
    """The peak RSS of a gunicorn and all its descendants, sampled every 10 ms while running."""

    def __init__(self, server: Gunicorn) -> None:
        self.server = server
        self.total_kb = self.child_kb = self.worker_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            workers = self.server.workers()
            decoders = [child for worker in workers for child in children(worker)]
            sizes = {pid: status_kb(pid, "VmRSS") for pid in [self.server.proc.pid, *workers, *decoders]}
            self.total_kb = max(self.total_kb, sum(sizes.values()))
            self.child_kb = max([self.child_kb, *(sizes[pid] for pid in decoders)])
            self.worker_kb = max([self.worker_kb, *(sizes[pid] for pid in workers)])
            time.sleep(0.01)

    def __enter__(self) -> Peak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _times(server: Gunicorn, path: str, requests: int) -> list[float]:
    times = []
    for _ in range(requests):
        status, seconds = server.ask("GET", path, timeout=60)
        if status != 200:
            raise RuntimeError(f"{path} answered {status}: {server.log_text()[-2000:]}")
        times.append(seconds)
    return times


def _image_p50(server: Gunicorn, host: str, requests: int) -> float:
    _times(server, f"/predict?url={host}/jpeg_1000x750", 3)  # warm
    return percentile(_times(server, f"/predict?url={host}/jpeg_1000x750", requests), 0.5)


def run(requests: int, before: Path | None, seconds: int = 60) -> dict[str, Any]:
    pin_load()
    files = {**make_clips(seconds), **make_images()}
    host = _host(files)
    base = f"http://127.0.0.1:{host.server_address[1]}"
    result: dict[str, Any] = {"requests": requests, "seconds": seconds, "clips": {}}
    image_requests = requests * 4
    if before is not None:
        env = service_env(free_port_below_ephemeral(), host.server_address[1])
        with Gunicorn(before / ".venv-serve", env, cwd=before, log="bench-video-before-") as old:
            result["image_p50_ms_before_checkout"] = round(_image_p50(old, base, image_requests) * 1e3, 2)
    env = service_env(free_port_below_ephemeral(), host.server_address[1])
    with Gunicorn(REPO / ".venv-serve", env, log="bench-video-") as server:
        result["image_p50_ms_before_videos"] = round(_image_p50(server, base, image_requests) * 1e3, 2)
        for name in (H264, VP9):
            _times(server, f"/predict?url={base}/{name}", 1)  # warm
            with Peak(server) as peak:
                times = _times(server, f"/predict?url={base}/{name}", requests)
            result["clips"][name] = {
                "bytes": len(files[name]),
                "p50_ms": round(percentile(times, 0.5) * 1e3, 1),
                "max_ms": round(max(times) * 1e3, 1),
                "peak_worker_rss_mb": round(peak.worker_kb / 1024, 1),
                "peak_child_rss_mb": round(peak.child_kb / 1024, 1),
                "peak_all_rss_mb": round(peak.total_kb / 1024, 1),
            }
        answers: list[int] = []
        with Peak(server) as peak:
            threads = [
                threading.Thread(
                    target=lambda n=name: answers.append(server.ask("GET", f"/predict?url={base}/{n}", timeout=60)[0])
                )
                for name in (H264, VP9)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        result["both_at_once"] = {"statuses": answers, "peak_all_rss_mb": round(peak.total_kb / 1024, 1)}
        result["image_p50_ms_after_videos"] = round(_image_p50(server, base, image_requests) * 1e3, 2)
    host.shutdown()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=7)
    parser.add_argument("--seconds", type=int, default=60, help="the clips' length")
    parser.add_argument("--before", type=Path, default=None, help="a checkout without video, with its .venv-serve")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    result = run(args.requests, args.before, args.seconds)
    for name, figures in result["clips"].items():
        print(f"{name}: p50 {figures['p50_ms']} ms (max {figures['max_ms']}), peak RSS worker "
              f"{figures['peak_worker_rss_mb']} MB, decoder {figures['peak_child_rss_mb']} MB, "
              f"all {figures['peak_all_rss_mb']} MB")  # fmt: skip
    print(f"both at once: {result['both_at_once']}")
    for key in ("image_p50_ms_before_checkout", "image_p50_ms_before_videos", "image_p50_ms_after_videos"):
        if key in result:
            print(f"{key}: {result[key]}")
    write_json(args.json, result)


if __name__ == "__main__":
    main()
