"""Request-level benchmark of the service exactly as deployed, against NSFW-FLASK's path in the same run.

    ./scripts/bench                      # makes the virtualenvs, then runs this
    python -m bench.serve [--seconds 10] [--requests 200] [--no-baseline] [--before DIR]

The service runs as deployed (`gunicorn app:app` with gunicorn.conf.py, WEB_CONCURRENCY=2) from
.venv-serve, pinned to CPU 0 (`taskset -c 0`) to stand in for 1 vCPU. This process, the load and the
image host (bench.imageserver, a separate process) are pinned to CPU 1. Per image type it measures
latency at concurrency 1 and at saturation, sustained requests/s, /health latency while saturated;
per server, cold start (process start to the first 200 from /health) and peak RSS of the arbiter,
each worker and all together. The baseline (bench.baseline_app: NSFW-FLASK's download-to-file,
Keras load_img and model.predict on TensorFlow, from .venv) gets the same requests on the same CPU.
Also: model-only inference in the serving runtime, the serving install's size, and a row per model
(--models, default every bundled one): latency and worker memory of a server that loads that model
alone, and of one that loads them all.

A table goes to stdout, all figures to bench/results/serve-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.harness import (
    LOAD_CPU,
    REPO,
    SERVICE_CPU,
    Gunicorn,
    free_port,
    image_server,
    pin_load,
    service_env,
    write_results,
)
from bench.imageserver import make_images, with_counter
from bench.load import (
    Request,
    TreeMemory,
    by_batch,
    by_upload,
    by_url,
    percentiles,
    saturate,
    sequential,
    throughput,
)
from nsfw.model.specs import BUNDLED

IMAGES = ("jpeg_1000x750", "jpeg_4000x3000", "png_alpha_800x600", "gif_anim_480x360x24")
FLOAT32_FLOOR_MS = 5.3  # 0.6 GFLOP per image at ~112 GFLOP/s on one core of this machine
TARGETS = {
    "model_only_ms": 8.0,
    "jpeg_1000x750_c1_p50_ms": 20.0,
    "jpeg_1000x750_c1_p99_ms": 40.0,
    "jpeg_1000x750_rps": 45.0,
    "speedup_vs_baseline": 10.0,
    "worker_peak_mb": 150.0,
    "total_peak_mb": 400.0,
    "cold_start_s": 2.0,
    "health_p99_ms": 100.0,
    "install_mb": 300.0,
}


def measure_server(
    name: str,
    base: str,
    proc: subprocess.Popen[bytes],
    args: argparse.Namespace,
    requests: int,
    loads: dict[str, tuple[Callable[[], Request], int]],
) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    with TreeMemory(proc.pid) as memory:
        idle = memory.window()
        for image, (paths, per_request) in loads.items():
            memory.window()
            sequential(base, paths, 5)  # warm: first-request costs
            one = sequential(base, paths, max(10, requests // per_request))  # about as many images
            loaded, health = saturate(base, paths, args.concurrency, args.seconds)
            ok = [s for s in loaded if s.status == 200]
            rows[image] = {
                "c1": {**percentiles(one), "errors": sum(s.status != 200 for s in one)},
                "saturated": {**percentiles(loaded), "errors": len(loaded) - len(ok)},
                "rps": throughput(loaded),
                "images_per_request": per_request,
                "health": percentiles(health),
                "memory": memory.window().summary(proc.pid),
            }
            print(f"  {name:9} {image:22} c1 p50 {rows[image]['c1']['p50_ms']:7.1f} ms, {rows[image]['rps']:5.1f} rps")
    return {"images": rows, "memory": memory.overall.summary(proc.pid), "idle_memory": idle.summary(proc.pid)}


def workloads(server: str, image_base: str) -> dict[str, tuple[Callable[[], Request], int]]:
    """Each row's requests and images per request: the four image types by URL for both servers;
    for the service also uploads (raw body, multipart) and batches of 8 and 32 URLs of the
    1000x750 JPEG."""
    rows = {image: (by_url(f"{image_base}/{image}"), 1) for image in IMAGES}
    if server == "service":
        jpeg = make_images()["jpeg_1000x750"]
        rows["upload_raw_jpeg_1000x750"] = (by_upload(lambda n: with_counter(jpeg, n), "raw"), 1)
        rows["upload_multipart_jpeg_1000x750"] = (by_upload(lambda n: with_counter(jpeg, n), "multipart"), 1)
        for size in (8, 32):
            rows[f"batch{size}_jpeg_1000x750"] = (by_batch(f"{image_base}/jpeg_1000x750", size), size)
    return rows


def model_only(python: str) -> dict[str, float]:
    code = (
        "import json, time, numpy as np\n"
        "from nsfw.config import Settings\nfrom nsfw.model import load_classifier\n"
        "c = load_classifier(Settings())\n"
        "x = np.random.default_rng(0).random((1, 224, 224, 3), dtype=np.float32)\n"
        "for _ in range(20): c.predict(x)\n"
        "t = []\n"
        "for _ in range(300):\n"
        "    s = time.perf_counter(); c.predict(x); t.append(time.perf_counter() - s)\n"
        "print(json.dumps({'median_ms': float(np.median(t)) * 1e3, 'p90_ms': float(np.percentile(t, 90)) * 1e3}))\n"
    )
    out = subprocess.run(
        ["taskset", "-c", SERVICE_CPU, python, "-c", code], cwd=REPO, check=True, capture_output=True, text=True
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return {key: round(value, 2) for key, value in result.items()}


def installed_mb(venv: Path) -> float:
    site = next((venv / "lib").glob("python*/site-packages"))
    total = sum(f.stat().st_size for f in site.rglob("*") if f.is_file() and not f.is_symlink())
    pip_itself = sum(f.stat().st_size for d in site.glob("pip*") for f in d.rglob("*") if f.is_file())
    return round((total - pip_itself) / 1e6, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="saturation run per image type")
    parser.add_argument("--requests", type=int, default=200, help="sequential requests per image type")
    parser.add_argument("--concurrency", type=int, default=4, help="clients at saturation")
    parser.add_argument("--baseline-requests", type=int, default=40)
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--models", type=_names, default=list(BUNDLED), help="model rows, a comma list")
    parser.add_argument("--serve-venv", type=Path, default=REPO / ".venv-serve")
    parser.add_argument("--tf-venv", type=Path, default=REPO / ".venv")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--before",
        type=Path,
        default=None,
        help="a work tree of another commit (git worktree add /tmp/before <commit>): served and measured "
        "like this one, right after it, with the same requests (row `before`)",
    )
    args = parser.parse_args()
    pin_load()

    result: dict[str, Any] = {
        "machine": {
            "cpu": _cpu_model(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "service_cpu": SERVICE_CPU,
            "load_cpu": LOAD_CPU,
        },
        "settings": vars(args)
        | {"serve_venv": str(args.serve_venv), "tf_venv": str(args.tf_venv), "out": None, "before": str(args.before)},
    }
    serve_python = str(args.serve_venv / "bin" / "python")
    result["model_only"] = model_only(serve_python)
    result["install_mb"] = installed_mb(args.serve_venv)
    with image_server(serve_python) as image_base:
        jpeg = {"jpeg_1000x750": (by_url(f"{image_base}/jpeg_1000x750"), 1)}
        service = workloads("service", image_base)
        servers = [("service", args.serve_venv, "app:app", [], args.requests, {}, service, REPO)]
        if args.before is not None:
            servers.append(("before", args.serve_venv, "app:app", [], args.requests, {}, service, args.before))
        if not args.no_baseline:
            baseline_conf = ["--config", "python:bench.baseline_gunicorn"]
            baseline_app, baseline = "bench.baseline_app:app", workloads("baseline", image_base)
            servers.append(
                ("baseline", args.tf_venv, baseline_app, baseline_conf, args.baseline_requests, {}, baseline, REPO)
            )
        # One row per model: a server that loads that model alone (NSFW_MODEL), so its worker RSS is
        # that model's, and one that loads all of them, as NSFW_MODELS would.
        for model in args.models:
            env = {"NSFW_MODEL": model, "NSFW_MODELS": model}
            servers.append((f"model:{model}", args.serve_venv, "app:app", [], args.requests // 2, env, jpeg, REPO))
        if len(args.models) > 1:
            env = {"NSFW_MODELS": ",".join(args.models)}
            servers.append(("model:all loaded", args.serve_venv, "app:app", [], args.requests // 2, env, jpeg, REPO))
        for name, venv, target, extra, requests, extra_env, loads, checkout in servers:
            env = service_env(free_port(), image_base.rsplit(":", 1)[1], extra_env)
            with Gunicorn(venv, env, target=target, options=extra, cwd=checkout) as server:
                result[name] = {"cold_start_s": round(server.cold_start_s, 2)}
                result[name] |= measure_server(name, server.base, server.proc, args, requests, loads)

    result["targets"] = check_targets(result)
    out = write_results(result, args.out, "serve")
    print_table(result)
    print(f"\nJSON: {out}")


def _names(raw: str) -> list[str]:
    return [name for name in raw.split(",") if name]


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def check_targets(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    service = result["service"]
    small = service["images"]["jpeg_1000x750"]
    measured: dict[str, float] = {
        "model_only_ms": result["model_only"]["median_ms"],
        "jpeg_1000x750_c1_p50_ms": small["c1"]["p50_ms"],
        "jpeg_1000x750_c1_p99_ms": small["c1"]["p99_ms"],
        "jpeg_1000x750_rps": small["rps"],
        "worker_peak_mb": service["memory"]["worker_peak_mb"],
        "total_peak_mb": service["memory"]["total_peak_mb"],
        "cold_start_s": service["cold_start_s"],
        "health_p99_ms": max(row["health"]["p99_ms"] for row in service["images"].values()),
        "install_mb": result["install_mb"],
    }
    if "baseline" in result:
        base_small = result["baseline"]["images"]["jpeg_1000x750"]
        measured["speedup_vs_baseline"] = round(base_small["c1"]["p50_ms"] / small["c1"]["p50_ms"], 1)
    higher_is_better = {"jpeg_1000x750_rps", "speedup_vs_baseline"}
    return {
        key: {
            "measured": value,
            "target": TARGETS[key],
            "met": bool(value >= TARGETS[key] if key in higher_is_better else value <= TARGETS[key]),
        }
        for key, value in measured.items()
    }


def print_table(result: dict[str, Any]) -> None:
    m = result["machine"]
    print(f"\n{m['cpu']}, {m['cpus']} CPUs; service on CPU {m['service_cpu']}, load on CPU {m['load_cpu']}")
    header = "| server | image | c=1 p50 | p90 | p99 | saturated p50 | p99 | req/s | /health p99 | worker RSS |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for name in ("service", "before", "baseline"):
        if name not in result:
            continue
        for image, row in result[name]["images"].items():
            c1, sat = row["c1"], row["saturated"]
            print(
                f"| {name} | {image} | {c1['p50_ms']:.1f} | {c1['p90_ms']:.1f} | {c1['p99_ms']:.1f} | "
                f"{sat['p50_ms']:.1f} | {sat['p99_ms']:.1f} | {row['rps']:.1f} | {row['health']['p99_ms']:.1f} | "
                f"{row['memory']['worker_peak_mb']:.0f} MB |"
            )
    print("\n| server | cold start | idle worker RSS | arbiter peak RSS | worker peak RSS | all processes peak |")
    print("|---|---|---|---|---|---|")
    for name in ("service", "before", "baseline"):
        if name in result:
            mem, idle = result[name]["memory"], result[name]["idle_memory"]
            print(
                f"| {name} | {result[name]['cold_start_s']:.2f} s | {idle['worker_peak_mb']:.0f} MB | "
                f"{mem['master_peak_mb']:.0f} MB | {mem['worker_peak_mb']:.0f} MB | {mem['total_peak_mb']:.0f} MB |"
            )
    models = [name for name in result if name.startswith("model:")]
    if models:
        print("\n| model (jpeg 1000x750) | c=1 p50 | p99 | req/s | cold start | idle worker RSS | worker peak |")
        print("|---|---|---|---|---|---|---|")
        for name in models:
            row, idle = result[name]["images"]["jpeg_1000x750"], result[name]["idle_memory"]
            print(
                f"| {name[6:]} | {row['c1']['p50_ms']:.1f} ms | {row['c1']['p99_ms']:.1f} ms | {row['rps']:.1f} | "
                f"{result[name]['cold_start_s']:.2f} s | {idle['worker_peak_mb']:.0f} MB | "
                f"{result[name]['memory']['worker_peak_mb']:.0f} MB |"
            )
    mo = result["model_only"]
    print(
        f"\nmodel only (LiteRT, 1 thread): median {mo['median_ms']:.2f} ms, p90 {mo['p90_ms']:.2f} ms "
        f"= {mo['median_ms'] / FLOAT32_FLOOR_MS:.2f}x the float32 floor; serving install {result['install_mb']} MB"
    )
    print("\n| target | measured | goal | met |")
    print("|---|---|---|---|")
    for key, t in result["targets"].items():
        print(f"| {key} | {t['measured']} | {t['target']} | {'yes' if t['met'] else 'NO'} |")


if __name__ == "__main__":
    sys.exit(main())
