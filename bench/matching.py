"""What near-duplicate matching costs, on one core.

    ./scripts/bench matching [--sizes 10000,100000,1000000] [--rounds 30]
    taskset -c 0 python -m bench.matching [...]

- hashing: PDQ of one decoded frame as the service hashes it (nsfw/matching/pdq.frame_hashes: the
  luma, eight dihedral hashes and three centre crops; and hash_frame, the original alone), median
  milliseconds by frame size, against the decode of the same image as a JPEG (what the request
  already pays) in the same run;
- lookup: one still image looked up (its eight dihedral hashes against every signal) in an index of
  N random signals, median milliseconds, and the index's memory (its arrays, and the process's RSS
  growth while it is built);
- load: how long building that index from N signals takes (a worker's start, the store's read aside).

A table goes to stdout, all figures to bench/results/matching-<time>.json.
"""

from __future__ import annotations

import argparse
import io
import itertools
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench.harness import REPO, write_results
from nsfw.matching import pdq
from nsfw.matching.index import Index, Signal

PHOTO = REPO / "tests" / "data" / "reference" / "corpus" / "rocket.jpg"
FRAME_SIZES = ((640, 427), (1000, 750), (1920, 1280), (4000, 2667))


def _median_ms(call: Callable[[], object], rounds: int) -> float:
    call()
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return round(statistics.median(times) * 1e3, 3)


def _rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def hashing(rounds: int) -> list[dict[str, Any]]:
    photo = Image.open(PHOTO).convert("RGB")
    rows = []
    for size in FRAME_SIZES:
        frame = photo.resize(size)
        out = io.BytesIO()
        frame.save(out, "JPEG", quality=90)
        data = out.getvalue()

        def decode(data: bytes = data) -> Image.Image:
            image = Image.open(io.BytesIO(data))
            image.load()
            return image

        rows.append(
            {
                "size": f"{size[0]}x{size[1]}",
                "frame_hashes_ms": _median_ms(lambda frame=frame: pdq.frame_hashes(frame), rounds),
                "hash_frame_ms": _median_ms(lambda frame=frame: pdq.hash_frame(frame), rounds),
                "jpeg_decode_ms": _median_ms(decode, rounds),
            }
        )
    return rows


def lookup(sizes: list[int], rounds: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(26)
    query = pdq.frame_hashes(Image.open(PHOTO).convert("RGB"))
    rows = []
    for size in sizes:
        before = _rss_kib()
        started = time.perf_counter()
        index = Index(min_quality=50)
        ids = itertools.count(1)
        for chunk in range(0, size, 50_000):
            words = rng.integers(0, 256, size=(min(50_000, size - chunk), 32), dtype=np.uint8)
            index.add(
                Signal(next(ids), f"rv_{n // 4}", "adult", row.tobytes().hex(), 100, 31)
                for n, row in enumerate(words, chunk)
            )
        loaded = time.perf_counter() - started
        rows.append(
            {
                "signals": size,
                "lookup_ms": _median_ms(lambda index=index: index.lookup([query]), rounds),
                "index_mib": round(index.nbytes / 2**20, 1),
                "rss_growth_mib": round((_rss_kib() - before) / 1024, 1),
                "load_s": round(loaded, 2),
            }
        )
        del index
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000", help="index sizes, comma-separated")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    sizes = [int(part) for part in args.sizes.split(",") if part]
    result = {"hashing": hashing(args.rounds), "lookup": lookup(sizes, args.rounds)}
    print("frame        frame_hashes  hash_frame  jpeg decode (ms, median)")
    for row in result["hashing"]:
        print(f"{row['size']:<12} {row['frame_hashes_ms']:>12} {row['hash_frame_ms']:>11} {row['jpeg_decode_ms']:>12}")
    print("signals      lookup ms  index MiB  RSS growth MiB  build s")
    for row in result["lookup"]:
        sizes = f"{row['index_mib']:>10} {row['rss_growth_mib']:>15}"
        print(f"{row['signals']:<12} {row['lookup_ms']:>9} {sizes} {row['load_s']:>8}")
    print(f"results: {write_results(result, args.out, 'matching')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
