"""Deployment files agree with each other, lint clean, and start the service as deployed."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.support import REPO, ImageServer, corpus_bytes

RUN = "gunicorn app:app"


def _dockerfile() -> str:
    return (REPO / "Dockerfile").read_text()


def test_every_deployment_runs_the_same_command() -> None:
    assert (REPO / "Procfile").read_text().strip() == f"web: {RUN}"
    assert re.search(rf"^\s*run_command: {RUN}$", (REPO / ".do" / "app.yaml").read_text(), re.M)
    cmd = re.search(r"^CMD (\[.*\])$", _dockerfile(), re.M)
    assert cmd and json.loads(cmd.group(1)) == RUN.split()


def test_do_app_spec_fits_the_small_box_and_probes_health() -> None:
    spec = (REPO / ".do" / "app.yaml").read_text()
    for line in (
        "instance_size_slug: apps-s-1vcpu-1gb",
        "http_port: 8080",
        "http_path: /health",
        "environment_slug: python",
    ):
        assert re.search(rf"^\s*{re.escape(line)}$", spec, re.M), line
    timeout = int(re.search(r"timeout_seconds: (\d+)", spec).group(1))  # type: ignore[union-attr]
    delay = int(re.search(r"initial_delay_seconds: (\d+)", spec).group(1))  # type: ignore[union-attr]
    assert 1 <= timeout <= 5 and delay >= 5


def _gunicorn_conf(env: dict[str, str]) -> dict[str, object]:
    code = (
        "import json, runpy; c = runpy.run_path('gunicorn.conf.py'); "
        "print(json.dumps({k: v for k, v in c.items() if isinstance(v, (str, int, float, bool))}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={**env, "PATH": os.environ["PATH"]},
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout)


def test_gunicorn_conf() -> None:
    conf = _gunicorn_conf({})
    assert conf["bind"] == "0.0.0.0:8080" and conf["workers"] == 2
    assert conf["worker_class"] == "gthread" and int(conf["threads"]) >= 2  # type: ignore[arg-type]
    assert conf["worker_tmp_dir"] == "/dev/shm" and conf["preload_app"] is False
    assert 30 <= int(conf["timeout"]) <= 120  # type: ignore[arg-type]
    conf = _gunicorn_conf({"PORT": "9000", "WEB_CONCURRENCY": "3"})
    assert conf["bind"] == "0.0.0.0:9000" and conf["workers"] == 3


def test_dockerfile_shape() -> None:
    text = _dockerfile()
    assert re.search(r"^FROM python:3\.11-slim$", text, re.M)
    assert "pip install --no-cache-dir -r requirements.txt" in text
    assert re.search(r"^COPY models \./models$", text, re.M)
    user = re.search(r"^USER (\S+)$", text, re.M)
    assert user and user.group(1) not in ("root", "0")
    assert "HEALTHCHECK" in text and "curl" not in text.split("HEALTHCHECK", 1)[1].split("\n#", 1)[0].replace(
        "No curl", ""
    )


def test_dockerfile_lints_clean() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if hadolint is None:
        pytest.fail("hadolint missing: pip install -r requirements-dev.txt")
    result = subprocess.run([hadolint, "Dockerfile"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _serving_python() -> str:
    """The serving-only virtualenv (the Dockerfile's install step) when scripts/test made one."""
    path = os.environ.get("TEST_SERVING_PYTHON")
    if path:
        return path
    if os.environ.get("CI"):
        pytest.fail("TEST_SERVING_PYTHON is not set; scripts/test makes .venv-serve")
    return sys.executable


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, method: str = "GET", timeout: float = 10) -> tuple[int, dict]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture()
def deployed(image_server: ImageServer, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """gunicorn started with the Dockerfile's CMD from the serving virtualenv, as a container would."""
    python = _serving_python()
    port = _free_port()
    env = {
        "PATH": f"{Path(python).parent}:{os.environ['PATH']}",
        "PORT": str(port),
        "WEB_CONCURRENCY": "2",
        "NSFW_ALLOWED_NETWORKS": "127.0.0.1/32",
        "NSFW_ALLOWED_PORTS": f"80,443,{image_server.port}",
    }
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", _dockerfile(), re.M).group(1))  # type: ignore[union-attr]
    log = (tmp_path / "gunicorn.log").open("wb")
    proc = subprocess.Popen(
        [str(Path(python).parent / cmd[0]), *cmd[1:]],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if _get(f"{base}/health", timeout=1)[0] == 200:
                    break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail("gunicorn never became healthy:\n" + (tmp_path / "gunicorn.log").read_text())
        yield base, python
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.mark.slow
def test_deployed_service_predicts_and_stays_healthy_under_load(
    deployed: tuple[str, str], image_server: ImageServer, reference: Path
) -> None:
    base, python = deployed
    image = image_server.add_file("/lighthouse.jpg", corpus_bytes("068_lighthouse.jpg"))
    status, scores = _get(f"{base}/predict?url={image}", method="POST")
    assert status == 200 and list(scores) == ["drawings", "hentai", "neutral", "porn", "sexy"]
    expected = json.loads((reference / "nsfwjs_mobilenet_v2.json").read_text())["images"]["068_lighthouse.jpg"]
    assert np.abs(np.array(list(scores.values())) - expected["variants"]["main"]["probs_array"]).max() <= 1e-3

    stop = time.monotonic() + 3
    statuses: list[int] = []

    def hammer() -> None:
        while time.monotonic() < stop:
            statuses.append(_get(f"{base}/predict?url={image}", method="POST")[0])

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    health_times = []
    while time.monotonic() < stop:
        started = time.monotonic()
        assert _get(f"{base}/health", timeout=5)[0] == 200
        health_times.append(time.monotonic() - started)
        time.sleep(0.05)
    for t in threads:
        t.join()
    assert statuses and set(statuses) == {200}
    assert max(health_times) < 1.0, max(health_times)

    # The Dockerfile's HEALTHCHECK, run with the serving interpreter against the live service.
    check = re.search(
        r'CMD \["python", "-c", "(.*)"\]\s*$', _dockerfile().split("HEALTHCHECK", 1)[1].split("\nCMD")[0], re.S
    )
    assert check
    port = base.rsplit(":", 1)[1]
    subprocess.run([python, "-c", check.group(1)], env={"PORT": port}, check=True, timeout=10)


def test_run_script_installs_serving_requirements_and_starts_the_procfile_command() -> None:
    text = (REPO / "scripts" / "run").read_text()
    executable, target = shlex.split(text.strip().splitlines()[-1])[-2:]
    assert "-r requirements.txt" in text and Path(executable).name == "gunicorn" and target == "app:app"
