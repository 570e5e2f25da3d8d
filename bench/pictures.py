"""What the review queue's pictures cost: made from the frames the model's decode saw (issue 23),
against the second decode the service made for them before.

    ./scripts/bench pictures [--rounds 30] [--json out.json]
    taskset -c 0 .venv-serve/bin/python -m bench.pictures [...]

For each of bench.serve's images, in one process on one core, the rounds interleaved: the median
time of one detailed classification (decode, model, verdict) without the review queue, the same with
it (the pictures made during the decode: every detailed request pays this, not only those queued),
and the second decode that the service made before for each image it queued (frame_thumbnails alone,
under the model's lock). The real model (LiteRT), no cache. Then, on the decoded frame alone, what
its pictures cost: the 256 px thumbnail the queue made before issue 27, against the thumbnail and the
NSFW_REVIEW_PREVIEW_PX preview it makes now (the preview first, the thumbnail from it).
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from bench.imageserver import make_images
from nsfw.config import Settings
from nsfw.imaging.decode import decode_frames
from nsfw.imaging.thumbnail import frame_thumbnails, picture, pictures
from nsfw.model import load_classifier
from nsfw.pipeline.service import Ask, ReviewContext, build_service, decode_limits
from nsfw.pipeline.verdict import Policy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--json", type=Path, default=None, help="also write the medians here")
    args = parser.parse_args()
    settings = Settings()
    service = build_service(settings)
    classifier = load_classifier(settings)
    service.models.set_one(classifier)
    made: list[int] = []

    def hook(prediction, image, context, pictures):  # type: ignore[no-untyped-def]
        made.append(len(pictures() or {}))  # what the queue would store
        return prediction

    service.review_hook = hook
    policy = Policy.of(settings)
    plain, reviewed = Ask(policy=policy), Ask(policy=policy, review=ReviewContext("bench"))
    limits = decode_limits(settings)
    result: dict[str, dict[str, float]] = {}

    def timed(call: Callable[[], object]) -> float:
        started = time.perf_counter()
        call()
        return (time.perf_counter() - started) * 1e3

    print("| image | detailed, queue off | detailed, queue on (pictures in the decode) | ratio | old second decode |")
    print("|---|---|---|---|---|")
    for name, data in make_images().items():
        runs: dict[str, list[float]] = {"off": [], "on": [], "second": []}

        def second(data: bytes = data) -> object:
            return frame_thumbnails(io.BytesIO(data), limits=limits, max_frames=settings.max_frames)

        for round_ in range(args.rounds + 3):
            off = timed(lambda data=data: service.classify(classifier, io.BytesIO(data), plain))
            on = timed(lambda data=data: service.classify(classifier, io.BytesIO(data), reviewed))
            again = timed(second)
            if round_ >= 3:  # the first rounds warm caches
                runs["off"].append(off)
                runs["on"].append(on)
                runs["second"].append(again)
        median_off, median_on, median_again = (statistics.median(runs[key]) for key in ("off", "on", "second"))
        print(
            f"| {name} | {median_off:.1f} ms | {median_on:.1f} ms | {median_on / median_off:.2f} | "
            f"{median_again:.1f} ms |"
        )
        result[name] = {"queue_off_ms": median_off, "queue_on_ms": median_on, "second_decode_ms": median_again}
    print()
    print("| image | thumbnail alone (before) | thumbnail and preview (now) | ratio | preview bytes |")
    print("|---|---|---|---|---|")
    for name, data in make_images().items():
        frame = decode_frames(io.BytesIO(data), limits=limits, max_frames=1).images[0]
        costs: dict[str, list[float]] = {"before": [], "now": []}
        for round_ in range(args.rounds + 3):
            before = timed(lambda frame=frame: picture(frame))
            now = timed(lambda frame=frame: pictures(frame, settings.review_preview_px))
            if round_ >= 3:
                costs["before"].append(before)
                costs["now"].append(now)
        median_before, median_now = statistics.median(costs["before"]), statistics.median(costs["now"])
        size = len(pictures(frame, settings.review_preview_px).preview)
        print(f"| {name} | {median_before:.1f} ms | {median_now:.1f} ms | {median_now / median_before:.2f} | {size} |")
        result[name] |= {"thumbnail_ms": median_before, "thumbnail_and_preview_ms": median_now, "preview_bytes": size}
    assert made and all(made), "the hook got no pictures"
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
