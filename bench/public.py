"""What running in public costs a request: API keys, a rate limit and a metrics scraper on, against
the same server with them off, in the same run.

    ./scripts/bench public [--rounds 3] [--requests 200] [--seconds 5]
    python -m bench.public [...]

Two configurations of the service as deployed (`gunicorn app:app`, 2 workers, pinned to CPU 0 with
`taskset` to stand in for 1 vCPU; the load and the image host on CPU 1):

- off: no NSFW_API_KEYS, no NSFW_RATE_LIMIT;
- on: 3 keys (the request's is the last one compared), NSFW_RATE_LIMIT=1000000/minute;1000000000/day
  (two windows counted per request, in the instance's shared SQLite file, never reached), and
  NSFW_METRICS_TOKEN with a scraper reading /metrics every second during the run.

Metrics are recorded in both (they have no off switch); "on" adds the scrapes. Per row (GET /models:
the overhead alone, with no model work; POST /predict?url= of a 1000x750 JPEG: a real request) it
measures the c=1 p50 and the saturated throughput (4 clients), alternating the two configurations
for `--rounds` rounds, and reports the median over rounds of each and the difference on - off.
A table goes to stdout, all figures to bench/results/public-<time>.json.
"""

from __future__ import annotations

import argparse
import statistics
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.harness import REPO, Gunicorn, free_port, image_server, pin_load, service_env, write_results
from bench.load import Client, Request, by_url, percentiles, saturate, sequential, throughput

TOKENS = ("a" * 43, "b" * 43, "c" * 43)
METRICS_TOKEN = "m" * 43
CONFIGS: dict[str, dict[str, str]] = {
    "off": {},
    "on": {
        "NSFW_API_KEYS": ",".join(f"k{n}:{token}" for n, token in enumerate(TOKENS)),
        "NSFW_RATE_LIMIT": "1000000/minute;1000000000/day",
        "NSFW_METRICS_TOKEN": METRICS_TOKEN,
    },
}


def _with_key(make: Callable[[], Request], config: str) -> Callable[[], Request]:
    if config == "off":
        return make

    def keyed() -> Request:
        path, body, headers = make()
        return path, body, {**headers, "Authorization": f"Bearer {TOKENS[-1]}"}

    return keyed


def _scraper(base: str, stop_event: threading.Event, statuses: list[int]) -> threading.Thread:
    def scrape() -> None:
        client = Client(base)
        while not stop_event.wait(1.0):
            statuses.append(
                client.request("GET", "/metrics", None, {"Authorization": f"Bearer {METRICS_TOKEN}"}).status
            )
        client.close()

    thread = threading.Thread(target=scrape, daemon=True)
    thread.start()
    return thread


def measure(config: str, base: str, image_base: str, args: argparse.Namespace) -> dict[str, Any]:
    rows: dict[str, tuple[str, Callable[[], Request]]] = {
        "models": ("GET", lambda: ("/models", None, {})),
        "jpeg_1000x750": ("POST", by_url(f"{image_base}/jpeg_1000x750")),
    }
    stop_event, scrapes = threading.Event(), []
    scraper = _scraper(base, stop_event, scrapes) if config == "on" else None
    result: dict[str, Any] = {}
    try:
        for name, (method, make) in rows.items():
            keyed = _with_key(make, config)
            sequential(base, keyed, 5, method=method)  # warm
            one = sequential(base, keyed, args.requests, method=method)
            loaded, _ = saturate(base, keyed, args.concurrency, args.seconds, method=method)
            result[name] = {
                "c1_p50_ms": percentiles(one)["p50_ms"],
                "rps": throughput(loaded),
                "errors": sum(s.status != 200 for s in one) + sum(s.status != 200 for s in loaded),
            }
    finally:
        stop_event.set()
        if scraper is not None:
            scraper.join(5)
    result["scrapes"] = {"count": len(scrapes), "ok": scrapes.count(200)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="off/on pairs, alternated")
    parser.add_argument("--requests", type=int, default=200, help="sequential requests per row")
    parser.add_argument("--seconds", type=float, default=5.0, help="saturation run per row")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--venv", type=Path, default=REPO / ".venv-serve")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    pin_load()
    python = str(args.venv / "bin" / "python")
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in CONFIGS}
    with image_server(python) as image_base:
        for round_number in range(args.rounds):
            for config, extra in CONFIGS.items():
                env = service_env(free_port(), image_base.rsplit(":", 1)[1], extra)
                with Gunicorn(args.venv, env) as server:
                    run = measure(config, server.base, image_base, args)
                runs[config].append(run)
                print(
                    f"  round {round_number + 1} {config:3} "
                    + ", ".join(
                        f"{row} c1 p50 {run[row]['c1_p50_ms']:.2f} ms {run[row]['rps']:.1f} rps"
                        for row in ("models", "jpeg_1000x750")
                    )
                )
    summary = summarise(runs)
    result = {"settings": {k: str(v) for k, v in vars(args).items()}, "runs": runs, "summary": summary}
    out = write_results(result, args.out, "public")
    print_table(summary)
    print(f"\nJSON: {out}")


def summarise(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per row: the median over rounds of c=1 p50 and of throughput, off and on, and on - off."""
    summary: dict[str, Any] = {}
    for row in ("models", "jpeg_1000x750"):
        medians = {
            config: {
                "c1_p50_ms": round(statistics.median(run[row]["c1_p50_ms"] for run in runs[config]), 3),
                "rps": round(statistics.median(run[row]["rps"] for run in runs[config]), 1),
                "errors": sum(run[row]["errors"] for run in runs[config]),
            }
            for config in runs
        }
        summary[row] = {
            **medians,
            "c1_p50_cost_ms": round(medians["on"]["c1_p50_ms"] - medians["off"]["c1_p50_ms"], 3),
            "rps_ratio": round(medians["on"]["rps"] / medians["off"]["rps"], 3) if medians["off"]["rps"] else None,
        }
    summary["scrapes_ok"] = sum(run["scrapes"]["ok"] for run in runs["on"])
    return summary


def print_table(summary: dict[str, Any]) -> None:
    print("\n| row | c=1 p50 off | on | cost | req/s off | on | on/off | errors |")
    print("|---|---|---|---|---|---|---|---|")
    for row in ("models", "jpeg_1000x750"):
        s = summary[row]
        off, on = s["off"], s["on"]
        print(
            f"| {row} | {off['c1_p50_ms']:.2f} ms | {on['c1_p50_ms']:.2f} ms | {s['c1_p50_cost_ms']:+.2f} ms | "
            f"{off['rps']:.1f} | {on['rps']:.1f} | {s['rps_ratio']} | {off['errors'] + on['errors']} |"
        )
    print(f"\n/metrics scrapes answered 200 during the 'on' runs: {summary['scrapes_ok']}")


if __name__ == "__main__":
    main()
