"""A real gunicorn, started as the Dockerfile's CMD from the serving virtualenv, for tests from outside."""

from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest

from bench.harness import children, free_port_below_ephemeral, stop
from tests.support import REPO, ImageServer


def _dockerfile() -> str:
    return (REPO / "Dockerfile").read_text()


def _serving_python() -> str:
    """The serving-only virtualenv (the Dockerfile's install step) when scripts/test made one."""
    path = os.environ.get("TEST_SERVING_PYTHON")
    if path:
        return path
    if os.environ.get("CI"):
        pytest.fail("TEST_SERVING_PYTHON is not set; scripts/test makes .venv-serve")
    return sys.executable


def _get(url: str, method: str = "GET", timeout: float = 10) -> tuple[int, dict]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def call(server: Gunicorn, method: str, path: str, token: str, body: dict | None = None) -> tuple[int, bytes, dict]:
    """`method path` with the bearer token (and `body` as JSON): (status, raw body, headers), for errors too."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{server.base}{path}", data=data, method=method)
    request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=20) as answer:
            return answer.status, answer.read(), dict(answer.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


@dataclass
class Gunicorn:
    base: str
    python: str
    proc: subprocess.Popen[bytes]
    log: Path

    def workers(self) -> set[int]:
        """Pids of the arbiter's children, from /proc."""
        return set(children(self.proc.pid))


@pytest.fixture()
def start_gunicorn(image_server: ImageServer, tmp_path: Path) -> Iterator[Callable[..., Gunicorn]]:
    """gunicorn started with the Dockerfile's CMD from the serving virtualenv, as a container would."""
    started: list[tuple[subprocess.Popen[bytes], IO[bytes]]] = []

    def start(extra_env: dict[str, str] | None = None, *, wait_healthy: bool = True, app: str = "app:app") -> Gunicorn:
        python = _serving_python()
        port = free_port_below_ephemeral()
        env = {
            "PATH": f"{Path(python).parent}:{os.environ['PATH']}",
            "PORT": str(port),
            "WEB_CONCURRENCY": "2",
            "NSFW_ALLOWED_NETWORKS": "127.0.0.1/32",
            "NSFW_ALLOWED_PORTS": f"80,443,{image_server.port}",
            **(extra_env or {}),
        }
        cmd = json.loads(re.search(r"^CMD (\[.*\])$", _dockerfile(), re.M).group(1))  # type: ignore[union-attr]
        cmd = [app if part == "app:app" else part for part in cmd]  # another WSGI app, same server
        log_path = tmp_path / f"gunicorn-{len(started)}.log"
        log = log_path.open("wb")
        proc = subprocess.Popen(
            [str(Path(python).parent / cmd[0]), *cmd[1:]], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        started.append((proc, log))
        server = Gunicorn(f"http://127.0.0.1:{port}", python, proc, log_path)
        deadline = time.monotonic() + 60
        # Healthy means every worker booted: /health answers from the first one up, and a test that
        # counts the workers must not see the second one arrive later.
        workers = int(env["WEB_CONCURRENCY"])
        while wait_healthy and time.monotonic() < deadline:
            try:
                if _get(f"{server.base}/health", timeout=1)[0] == 200 and len(server.workers()) >= workers:
                    return server
                time.sleep(0.1)
            except (OSError, http.client.HTTPException):  # not listening yet (or a self-connect to the port)
                time.sleep(0.1)
        if wait_healthy:
            pytest.fail("gunicorn never became healthy:\n" + log_path.read_text())
        return server

    yield start
    for proc, log in started:
        stop(proc)
        log.close()


def health_probe(
    server: Gunicorn, stop: threading.Event, out: list[tuple[int, float]], timeout: float = 3
) -> threading.Thread:
    """Ask /health every 50 ms until stop is set; (status, seconds) into out, status 0 when it failed."""

    def probe() -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                status = _get(f"{server.base}/health", timeout=timeout)[0]
            except (OSError, http.client.HTTPException):
                status = 0
            out.append((status, time.monotonic() - started))
            time.sleep(0.05)

    thread = threading.Thread(target=probe)
    thread.start()
    return thread
