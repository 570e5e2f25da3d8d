"""Repeat traffic: the result cache off and on, in the same run.

    ./scripts/bench repeat [--requests 200] [--seconds 5] [--cache-size 256]
    python -m bench.repeat [...]

The service as deployed (`gunicorn app:app`, 2 workers, pinned to CPU 0 with `taskset`; the load
and the image host on CPU 1), once with NSFW_CACHE_SIZE=0 and once with NSFW_CACHE_SIZE=<size>, each
asked the same things:

- hit: POST /predict?url= of one 1000x750 JPEG again and again (c=1 p50: with the cache, a hit);
- repeat: half the requests repeat an earlier request's bytes, half are new (saturated, 4 clients:
  requests per second);
- full: worker RSS (peak, from /proc) after NSFW_CACHE_SIZE distinct images per worker.

A table goes to stdout, all figures to bench/results/repeat-<time>.json.
"""

from __future__ import annotations

import argparse
import itertools
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.harness import REPO, Gunicorn, free_port, image_server, pin_load, service_env, write_results
from bench.load import Request, TreeMemory, percentiles, saturate, sequential, throughput


def _one_image(image_base: str) -> Callable[[], Request]:
    return lambda: (f"/predict?url={image_base}/jpeg_1000x750%3Fn%3D1", None, {})


def _repeating(image_base: str, seed: int = 7) -> Callable[[], Request]:
    """Every other request repeats the bytes of an earlier one (the image server writes ?n= into
    the file: the same n, the same bytes)."""
    rng, numbers, issued = random.Random(seed), itertools.count(1000), []

    def make() -> Request:
        if issued and rng.random() < 0.5:
            n = rng.choice(issued)
        else:
            n = next(numbers)
            issued.append(n)
        return f"/predict?url={image_base}/jpeg_1000x750%3Fn%3D{n}", None, {}

    return make


def measure(base: str, image_base: str, proc_pid: int, args: argparse.Namespace, cache_size: int) -> dict[str, Any]:
    hit = _one_image(image_base)
    sequential(base, hit, 5)
    one = sequential(base, hit, args.requests)
    loaded, _ = saturate(base, _repeating(image_base), args.concurrency, args.seconds)
    with TreeMemory(proc_pid) as memory:
        numbers = itertools.count(100_000)
        # Distinct images until every worker's LRU is full (requests spread over both workers).
        sequential(
            base,
            lambda: (f"/predict?url={image_base}/jpeg_1000x750%3Fn%3D{next(numbers)}", None, {}),
            max(10, 2 * cache_size + 20),
        )
        full = memory.window().summary(proc_pid)
    return {
        "hit_c1": percentiles(one),
        "repeat_rps": throughput(loaded),
        "errors": sum(s.status != 200 for s in one) + sum(s.status != 200 for s in loaded),
        "worker_peak_mb_full": full["worker_peak_mb"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--cache-size", type=int, default=256)
    parser.add_argument("--venv", type=Path, default=REPO / ".venv-serve")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    pin_load()
    result: dict[str, Any] = {"settings": {k: str(v) for k, v in vars(args).items()}}
    with image_server(str(args.venv / "bin" / "python")) as image_base:
        for name, size in (("off", 0), ("on", args.cache_size)):
            env = service_env(free_port(), image_base.rsplit(":", 1)[1], {"NSFW_CACHE_SIZE": str(size)})
            with Gunicorn(args.venv, env) as server:
                result[name] = measure(server.base, image_base, server.proc.pid, args, size)
            row = result[name]
            print(f"  cache {name:3}: c1 p50 {row['hit_c1']['p50_ms']:.2f} ms, {row['repeat_rps']:.1f} rps")
    out = write_results(result, args.out, "repeat")
    off, on = result["off"], result["on"]
    print("\n| cache | c=1 p50, one image again | req/s, half repeats | worker RSS, cache full | errors |")
    print("|---|---|---|---|---|")
    for name, row in (("off", off), (f"on ({args.cache_size})", on)):
        print(
            f"| {name} | {row['hit_c1']['p50_ms']:.2f} ms | {row['repeat_rps']:.1f} | "
            f"{row['worker_peak_mb_full']:.0f} MB | {row['errors']} |"
        )
    print(f"\nJSON: {out}")


if __name__ == "__main__":
    main()
