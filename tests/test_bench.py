"""The benchmark harness works end to end (in miniature), and its inputs are what it claims."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.imageserver import make_images, with_counter
from bench.load import Sample, percentiles, throughput
from tests.reference import Corpus
from tests.support import REPO, ImageServer


@pytest.fixture(scope="module")
def images() -> dict[str, bytes]:
    return make_images()


def test_every_request_is_a_new_body_with_the_same_pixels(images: dict[str, bytes]) -> None:
    assert set(images) == {"jpeg_1000x750", "jpeg_4000x3000", "png_alpha_800x600", "gif_anim_480x360x24"}
    for name, data in images.items():
        one, two = with_counter(data, 1), with_counter(data, 2)
        assert one != two
        pixels = [np.asarray(Image.open(io.BytesIO(d)).convert("RGBA")) for d in (data, one, two)]
        assert all(np.array_equal(pixels[0], p) for p in pixels[1:]), name
    original = Image.open(io.BytesIO(images["gif_anim_480x360x24"]))
    varied = Image.open(io.BytesIO(with_counter(images["gif_anim_480x360x24"], 7)))
    assert varied.n_frames == original.n_frames == 24  # the comment goes before the trailer
    original.seek(23)
    varied.seek(23)
    assert np.array_equal(np.asarray(original.convert("RGB")), np.asarray(varied.convert("RGB")))
    assert Image.open(io.BytesIO(images["png_alpha_800x600"])).mode == "RGBA"


def test_throughput_spans_first_start_to_last_end() -> None:
    samples = [Sample(0.0, 1.0, 200), Sample(1.0, 1.0, 200), Sample(1.5, 2.5, 200), Sample(0.5, 0.1, 503)]
    assert throughput(samples) == 0.8  # 3 successes over 3.75 s, the failure not counted


def test_percentiles_count_only_successes() -> None:
    samples = [Sample(0, ms / 1e3, 200) for ms in range(1, 101)] + [Sample(0, 9.0, 503)]
    assert percentiles(samples) == {"p50_ms": 50.5, "p90_ms": 90.1, "p99_ms": 99.01}


def _serving_venv() -> Path:
    """The serving-only virtualenv scripts/test made (the benchmarks run the service from it)."""
    serve_python = os.environ.get("TEST_SERVING_PYTHON")
    if not serve_python:
        if os.environ.get("CI"):
            pytest.fail("TEST_SERVING_PYTHON is not set; scripts/test makes .venv-serve")
        pytest.skip("needs .venv-serve (scripts/test makes it)")
    return Path(serve_python).parents[1]


def _run_bench(module: str, args: list[str], out: Path) -> dict:
    """`python -m <module> <args>` from the repository, as the README says; its JSON result from out."""
    subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, check=True, timeout=300, capture_output=True)
    return json.loads(out.read_text())


@pytest.mark.slow
def test_the_harness_runs_as_documented(tmp_path: Path) -> None:
    """`python -m bench.serve` in miniature, against the serving virtualenv as deployed."""
    serve_venv = _serving_venv()
    out = tmp_path / "result.json"
    args = ["--no-baseline", "--seconds", "1", "--requests", "3", "--models", "open_nsfw", "--out", str(out)]
    # --before serves another checkout (here this one) with the same requests, in the same run.
    result = _run_bench("bench.serve", [*args, "--serve-venv", str(serve_venv), "--before", str(REPO)], out)
    for image, row in result["service"]["images"].items():
        assert row["c1"]["errors"] == 0 and row["saturated"]["errors"] == 0, image
        assert row["rps"] > 0 and row["memory"]["worker_peak_mb"] > 0
    assert result["before"]["images"].keys() == result["service"]["images"].keys()
    assert all(row["c1"]["errors"] == 0 for row in result["before"]["images"].values())
    assert result["service"]["cold_start_s"] > 0 and result["model_only"]["median_ms"] > 0
    model_row = result["model:open_nsfw"]["images"]["jpeg_1000x750"]
    assert model_row["c1"]["errors"] == 0 and model_row["memory"]["worker_peak_mb"] > 0
    assert set(result["targets"]) >= {"jpeg_1000x750_rps", "worker_peak_mb", "install_mb"}


@pytest.mark.tensorflow
def test_the_baseline_is_nsfw_flasks_path_with_the_same_weights(
    image_server: ImageServer, repo_reference: Corpus
) -> None:
    """bench.baseline_app (Keras load_img + model.predict) agrees with GantMan's pipeline reference."""
    from bench import baseline_app

    name = "rocket.jpg"
    url = image_server.add_file("/a.jpg", repo_reference.image_bytes(name))
    scores = baseline_app.app.test_client().post(f"/predict?url={url}").get_json()
    got = np.array([scores[c] for c in baseline_app.CLASSES])
    assert np.abs(got - np.array(repo_reference.gantman()[name])).max() <= 1e-3


@pytest.mark.slow
def test_the_abuse_scenarios_run_as_documented(tmp_path: Path) -> None:
    """`python -m bench.abuse` in miniature: two scenarios, one second each, against this checkout."""
    serve_venv = _serving_venv()
    out = tmp_path / "abuse.json"
    args = ["--seconds", "1", "--only", "slow_upstreams", "--only", "keepalive_c8", "--json", str(out)]
    result = _run_bench("bench.abuse", [*args, "--venv", str(serve_venv)], out)
    assert set(result) == {"slow_upstreams", "keepalive_c8"}
    assert result["slow_upstreams"]["other_caller_n"] > 0 and result["keepalive_c8"]["c4_rps"] > 0


@pytest.mark.slow
def test_the_hostile_measurements_run_as_documented(tmp_path: Path) -> None:
    """`python -m bench.hostile` in miniature: two file classes one at a time, and the HTTP cases."""
    serve_venv = _serving_venv()
    out = tmp_path / "hostile.json"
    files = ["--file", "webp 40 MP", "--file", "accepted: jpeg 40 MP"]
    args = ["--only", "one_at_a_time", "--only", "http", *files, "--json", str(out)]
    result = _run_bench("bench.hostile", [*args, "--venv", str(serve_venv)], out)
    assert result["one_at_a_time"]["webp 40 MP"]["code"] == "image_too_large_to_decode"
    assert result["one_at_a_time"]["accepted: jpeg 40 MP"]["status"] == 200
    assert {case["type"] for case in result["http"].values()} == {"application/json"}


@pytest.mark.slow
def test_the_public_cost_runs_as_documented(tmp_path: Path) -> None:
    """`python -m bench.public` in miniature: one off/on pair, keys, limit and scraper on."""
    serve_venv = _serving_venv()
    out = tmp_path / "public.json"
    args = ["--rounds", "1", "--requests", "5", "--seconds", "1.5", "--out", str(out)]
    result = _run_bench("bench.public", [*args, "--venv", str(serve_venv)], out)
    for row in ("models", "jpeg_1000x750"):
        summary = result["summary"][row]
        assert summary["off"]["errors"] == 0 and summary["on"]["errors"] == 0, row  # the key was taken
        assert summary["off"]["rps"] > 0 and summary["on"]["rps"] > 0
    assert result["summary"]["scrapes_ok"] >= 1


@pytest.mark.slow
def test_the_repeat_traffic_rows_run_as_documented(tmp_path: Path) -> None:
    """`python -m bench.repeat` in miniature: the cache off and on, a small cache filled."""
    serve_venv = _serving_venv()
    out = tmp_path / "repeat.json"
    args = ["--requests", "5", "--seconds", "1", "--cache-size", "4", "--out", str(out)]
    result = _run_bench("bench.repeat", [*args, "--venv", str(serve_venv)], out)
    for name in ("off", "on"):
        assert result[name]["errors"] == 0 and result[name]["repeat_rps"] > 0
        assert result[name]["worker_peak_mb_full"] > 0


@pytest.mark.slow
def test_the_sign_in_memory_runs_as_documented(tmp_path: Path) -> None:
    """`python -m bench.signin` in miniature: 4 sign-ins at once with made-up names, one round."""
    serve_venv = _serving_venv()
    out = tmp_path / "signin.json"
    args = ["--clients", "4", "--rounds", "1", "--json", str(out)]
    result = _run_bench("bench.signin", [*args, "--venv", str(serve_venv)], out)
    assert sum(result["statuses"].values()) == 4 and "-1" not in result["statuses"]  # every page came
    assert set(result["statuses"]) <= {"401", "503"}  # wrong name or busy, never signed in
    assert len(result["worker_peaks_mb"]) == 2 and result["peak_total_mb"] > result["idle_total_mb"] > 0


@pytest.mark.slow
def test_the_faults_run_as_documented(tmp_path: Path) -> None:
    """`python -m bench.faults` in miniature: 8 items decided while a worker is killed, nothing lost."""
    serve_venv = _serving_venv()
    out = tmp_path / "faults.json"
    args = ["--items", "8", "--decide-seconds", "2", "--fault-at", "1", "--only", "kill9", "--json", str(out)]
    (result,) = _run_bench("bench.faults", [*args, "--venv", str(serve_venv)], out)["results"]
    assert result["answered"] == result["stored"] > 0 and not result["missing"] and not result["mismatched"]
    assert result["decided"] == result["delivered"] == 8 and not result["items_heard_under_two_ids"]
    assert result["recovered"] and result["health_failures"] == 0


def test_the_pictures_cost_runs_as_documented(tmp_path: Path) -> None:
    """`python -m bench.pictures` in miniature: one round per image, the hook given its pictures."""
    serve_venv = _serving_venv()
    out = tmp_path / "pictures.json"
    command = [str(serve_venv / "bin" / "python"), "-m", "bench.pictures", "--rounds", "1", "--json", str(out)]
    subprocess.run(command, cwd=REPO, check=True, timeout=300, capture_output=True)
    result = json.loads(out.read_text())
    assert set(result) == set(make_images())
    assert all(row["queue_on_ms"] > 0 and row["second_decode_ms"] > 0 for row in result.values())
    assert all(row["thumbnail_and_preview_ms"] > 0 and row["preview_bytes"] > 0 for row in result.values())


def test_the_matching_cost_runs_as_documented(tmp_path: Path) -> None:
    """`python -m bench.matching` in miniature: two rounds, a 1000-signal index; the index finds
    nothing in random signals, and every figure is there."""
    serve_venv = _serving_venv()
    out = tmp_path / "matching.json"
    command = [str(serve_venv / "bin" / "python"), "-m", "bench.matching", "--rounds", "2", "--sizes", "1000"]
    subprocess.run([*command, "--out", str(out)], cwd=REPO, check=True, timeout=300, capture_output=True)
    result = json.loads(out.read_text())
    assert [row["size"] for row in result["hashing"]] == ["640x427", "1000x750", "1920x1280", "4000x2667"]
    assert all(row["frame_hashes_ms"] > row["hash_frame_ms"] > 0 for row in result["hashing"])
    assert [row["signals"] for row in result["lookup"]] == [1000] and result["lookup"][0]["lookup_ms"] > 0


@pytest.mark.slow
def test_the_video_cost_runs_as_documented(tmp_path: Path) -> None:
    """`python -m bench.video` in miniature: 2 s clips, one request each, this checkout as --before."""
    out = tmp_path / "video.json"
    result = _run_bench(
        "bench.video", ["--seconds", "2", "--requests", "1", "--before", str(REPO), "--json", str(out)], out
    )
    for figures in result["clips"].values():
        assert figures["p50_ms"] > 0 and figures["peak_all_rss_mb"] > figures["peak_worker_rss_mb"] > 0
    assert result["both_at_once"]["statuses"] == [200, 200]
    assert result["image_p50_ms_before_checkout"] > 0 and result["image_p50_ms_after_videos"] > 0


@pytest.mark.slow
def test_the_hostile_videos_table_runs_as_documented(tmp_path: Path) -> None:
    out = tmp_path / "hostile_videos.json"
    result = _run_bench("bench.hostile_videos", ["--rounds", "1", "--json", str(out)], out)
    assert result["_left_behind"] == []
    assert result["many_streams.webm"]["code"] == "video_too_complex"
    assert result["one_keyframe.mp4"]["verdict"] == "adult"


def test_held_by_names_the_client_ports_a_process_accepted() -> None:
    """bench.faults tells a /health probe that died with the worker SIGKILL took (its connection was
    that worker's) from a failure to answer: the ports come from /proc, as for the decisions."""
    import socket

    from bench.faults import held_by

    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client:
            accepted, _ = server.accept()
            with accepted:
                assert client.getsockname()[1] in held_by(port, os.getpid())
            assert client.getsockname()[1] not in held_by(port, os.getpid())  # closed: no longer held


def test_the_adapter_cost_runs_as_documented(tmp_path: Path) -> None:
    """`python -m bench.adapter` in miniature: a few rounds, one small training of each width."""
    serve_venv = _serving_venv()
    out = tmp_path / "adapter.json"
    command = [str(serve_venv / "bin" / "python"), "-m", "bench.adapter", "--rounds", "20", "--requests", "2"]
    subprocess.run([*command, "--train-sizes", "60", "--json", str(out)], cwd=REPO, check=True, timeout=300)
    result = json.loads(out.read_text())
    assert result["tier_128"]["with_us"] > 0 and result["tier_1792"]["with_us"] > 0
    assert result["request"]["with_ms"] > 0 and set(result) >= {"train_128_60", "train_1792_60"}


def test_the_models_cost_runs_as_documented(tmp_path: Path) -> None:
    """`python -m bench.models` in miniature: each GantMan model through the service's loader, a few runs."""
    serve_venv = _serving_venv()
    out = tmp_path / "models.json"
    command = [str(serve_venv / "bin" / "python"), "-m", "bench.models", "--runs", "3", "--rounds", "1"]
    subprocess.run([*command, "--json", str(out)], cwd=REPO, check=True, timeout=300, capture_output=True)
    result = json.loads(out.read_text())
    assert set(result) == {"mobilenet_v2", "mobilenet_v2_mid"}
    assert all(row["median_ms"] > 0 and row["peak_rss_mb"] > 50 for row in result.values())
