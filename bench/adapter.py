"""What the learned adapter tier costs a request, and what a training costs (issue 28).

    taskset -c 0 .venv-serve/bin/python -m bench.adapter [--rounds 2000] [--train-sizes 60,1000,5000] [--json out.json]

In one process on one core, medians:
- per request: the verdict without an adapter (the first tier's rule on the scores) against the
  same with a promoted adapter asked (Promoted.ask: one dot product over the embedding, then the
  tier's rule), for 128 features (mobilenet_v2) and 1792 (mobilenet_v2_mid), interleaved;
- whole detailed requests on a 1000x750 JPEG through the service with the real model (LiteRT), with
  and without an adapter promoted, interleaved: the tier's share of a request;
- one training with its 5-fold report card (what `adapter train` and the insights page wait for),
  on n synthetic decisions of each width.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from nsfw.config import Settings
from nsfw.model import load_classifier
from nsfw.model.adapter import Gate, LinearAdapter, Promoted, Served, fit, report_card
from nsfw.pipeline.service import Ask, build_service
from nsfw.pipeline.verdict import Policy, Tiers

UNSURE = {"drawings": 0.1, "hentai": 0.1, "neutral": 0.3, "porn": 0.3, "sexy": 0.2}


def _median_us(call: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e6


def tier_cost(width: int, rounds: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    promoted = Promoted()
    promoted.replace([Served(1, "m", "v", LinearAdapter(rng.normal(size=width), 0.1))])
    embedding = rng.random(width).astype(np.float32)
    tiers, policy = Tiers(Settings().verdicts), Policy(0.7, 0.7)
    adult, safe = ("hentai", "porn", "sexy"), ("drawings", "neutral")

    def without() -> object:
        return tiers.decide(policy, UNSURE, adult, safe, lambda _: 0.0)

    def with_adapter() -> object:
        return tiers.decide(policy, UNSURE, adult, safe, lambda _: 0.0, learned=promoted.ask("m", "v", embedding))

    a, b = [], []
    for _ in range(5):  # interleaved blocks
        a.append(_median_us(without, rounds))
        b.append(_median_us(with_adapter, rounds))
    return {"without_us": statistics.median(a), "with_us": statistics.median(b)}


def request_cost(rounds: int) -> dict[str, float]:
    from PIL import Image

    settings = Settings(load_in_background=False)
    service = build_service(settings)
    classifier = load_classifier(settings)
    service.models.set_one(classifier)
    promoted = Promoted()
    rng = np.random.default_rng(1)
    promoted.replace([Served(1, "mobilenet_v2", classifier.spec.version, LinearAdapter(rng.normal(size=128), 0.0))])
    out = io.BytesIO()
    Image.effect_noise((1000, 750), 60).convert("RGB").save(out, "JPEG", quality=85)
    body = out.getvalue()
    ask = Ask(policy=Policy(0.7, 0.7))

    def one() -> object:
        return service.predict_image(io.BytesIO(body), ask)

    without, with_adapter = [], []
    for _ in range(rounds):
        service.adapters = None
        without.append(_median_us(one, 1))
        service.adapters = promoted
        with_adapter.append(_median_us(one, 1))
    answer = service.predict_image(io.BytesIO(body), ask)
    assert answer.adapter is not None, "the adapter was not asked"
    return {"without_ms": statistics.median(without) / 1e3, "with_ms": statistics.median(with_adapter) / 1e3}


def training_cost(width: int, n: int) -> dict[str, float]:
    rng = np.random.default_rng(2)
    x = np.maximum(rng.normal(size=(n, width)), 0)
    y = (x[:, :8].sum(axis=1) > np.median(x[:, :8].sum(axis=1))).astype(np.int64)
    base = rng.random(n)
    started = time.perf_counter()
    report_card(x, y, base, adult_threshold=0.7, safe_threshold=0.7, gate=Gate())
    fit(x, y)
    return {"seconds": round(time.perf_counter() - started, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--train-sizes", default="60,1000,5000", help="decisions per timed training, comma list")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    results: dict[str, object] = {}
    for width in (128, 1792):
        results[f"tier_{width}"] = found = tier_cost(width, args.rounds)
        print(
            f"verdict, {width} features: {found['without_us']:.1f} us without an adapter, "
            f"{found['with_us']:.1f} us with one (+{found['with_us'] - found['without_us']:.1f} us)"
        )
    results["request"] = found = request_cost(args.requests)
    print(f"detailed request, 1000x750 JPEG: {found['without_ms']:.2f} ms without, {found['with_ms']:.2f} ms with")
    for width in (128, 1792):
        for n in (int(size) for size in args.train_sizes.split(",")):
            results[f"train_{width}_{n}"] = made = training_cost(width, n)
            print(f"training with its 5-fold card, {n} decisions x {width} features: {made['seconds']} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
