"""What each hostile video costs: its answer and its time, on one core.

    taskset -c 0 .venv-serve/bin/python -m bench.hostile_videos [--json out.json]

Each file of scripts/hostile_videos.py (and the three the reviews added: a duration that lies, frames
without timestamps, a clip whose only keyframe is its first) is sent as a raw `video/mp4` body to the
app in this process (the real model, LiteRT), three times; the median time, the status, the error code
or the number of frames judged. No copy may be left in the temporary folder.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from bench.harness import write_json
from nsfw import create_app
from nsfw.config import Settings
from scripts import hostile_videos as videos

CORPUS = Path(__file__).resolve().parents[1] / "tests" / "data" / "reference" / "corpus"


def cases() -> dict[str, Callable[[], bytes]]:
    safe = Image.open(CORPUS / "grace_hopper.jpg").convert("RGB")
    adult = Image.open(CORPUS / "microaneurysms.png").convert("RGB")
    frames = videos.vp8_packets([safe, safe] + [adult] * 6)
    return {
        **videos.HOSTILE,
        "lying_duration.webm": lambda: videos.lying_duration(frames, duration_ms=1.0),
        "laced_without_timestamps.webm": lambda: videos.laced_without_timestamps(frames),
        "one_keyframe.mp4": lambda: videos.clip(lambda t: safe if t < 2 else adult, seconds=8, fps=4, gop=1000),
    }


def run(rounds: int) -> dict[str, Any]:
    client = create_app(Settings(load_in_background=False)).test_client()
    rows: dict[str, Any] = {}
    for name, make in cases().items():
        data = make()
        times, answer, status = [], {}, 0
        for _ in range(rounds):
            started = time.perf_counter()
            response = client.post("/predict?detail=true", data=data, content_type="video/mp4")
            times.append(time.perf_counter() - started)
            status, answer = response.status_code, response.get_json() or {}
        rows[name] = {
            "bytes": len(data),
            "status": status,
            "code": answer.get("error", {}).get("code"),
            "verdict": answer.get("verdict", {}).get("label"),
            "frames_judged": len(answer.get("frames", {}).get("classified", [])),
            "median_s": round(statistics.median(times), 3),
        }
    rows["_left_behind"] = [p.name for p in Path(tempfile.gettempdir()).glob("nsfw-video-*")]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rows = run(args.rounds)
    print("| file | bytes | answer | frames judged | median |")
    print("|---|---|---|---|---|")
    for name, row in rows.items():
        if name.startswith("_"):
            continue
        answer = f"{row['status']} {row['code'] or row['verdict']}"
        print(f"| {name} | {row['bytes']:,} | {answer} | {row['frames_judged']} | {row['median_s']} s |")
    print("left behind:", rows["_left_behind"])
    write_json(args.json, rows)


if __name__ == "__main__":
    main()
