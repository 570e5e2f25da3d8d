"""Each bundled GantMan model as a worker loads and runs it: the service's own loader
(nsfw.model.load_classifier: a lean artifact expanded, warmed), then single-image inferences with
their embeddings (Classifier.infer, as every request runs it), each model in a fresh process.

    taskset -c 0 .venv-serve/bin/python -m bench.models [--runs 60] [--rounds 2] [--json out.json]

Reports per model: load seconds, median and p90 ms per image, and the process's peak RSS (what a
worker serving that model alone costs). The rounds alternate the models, so a noisy neighbour hits
both; the medians are over rounds. bench.runtimes compares the runtimes on the bare artifacts.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from bench.harness import REPO

MODELS = ("mobilenet_v2", "mobilenet_v2_mid")

_CHILD = r"""
import json, resource, sys, time
from dataclasses import replace
import numpy as np
from nsfw.config import Settings
from nsfw.model import load_classifier, infer
name, runs = sys.argv[1], int(sys.argv[2])
started = time.perf_counter()
classifier = load_classifier(replace(Settings(load_in_background=False), model=name, models=()))
loaded = time.perf_counter() - started
x = np.random.default_rng(0).random((1, 224, 224, 3)).astype(np.float32)
times = []
for _ in range(runs):
    t = time.perf_counter(); infer(classifier, x); times.append(time.perf_counter() - t)
times.sort()
print(json.dumps({"load_s": loaded, "median_ms": times[len(times) // 2] * 1e3,
                  "p90_ms": times[int(len(times) * 0.9)] * 1e3,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "backend": classifier.backend}))
"""


def measure(name: str, runs: int) -> dict[str, float | str]:
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, name, str(runs)], cwd=REPO, capture_output=True, text=True, check=True
    )
    result: dict[str, float | str] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    found: dict[str, list[dict[str, float | str]]] = {name: [] for name in MODELS}
    for _ in range(args.rounds):
        for name in MODELS:
            found[name].append(measure(name, args.runs))
    summary = {}
    print(f"{'model':18}{'runtime':13}{'load s':>8}{'median ms':>11}{'p90 ms':>9}{'peak RSS MB':>13}")
    for name, rows in found.items():
        summary[name] = {
            key: statistics.median(float(row[key]) for row in rows)
            for key in ("load_s", "median_ms", "p90_ms", "peak_rss_mb")
        }
        s = summary[name]
        print(
            f"{name:18}{rows[0]['backend']!s:13}{s['load_s']:8.2f}{s['median_ms']:11.2f}{s['p90_ms']:9.2f}"
            f"{s['peak_rss_mb']:13.1f}"
        )
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
