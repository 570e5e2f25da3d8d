"""What the benchmarks share: the service started as deployed, waited for and stopped; free ports and
CPU pinning; the image host; loopback HTTP servers on a thread; a process tree read from /proc;
percentiles; results written.

    with Gunicorn(venv, service_env(free_port(), image_port)) as server:  # this checkout, output dropped
        server.ask("GET", "/health"), server.pids(), server.cold_start_s
    with Service(checkout, venv, image_port, env) as service:  # any checkout, output in a log file
        ...

The service always runs as `taskset -c 0 <venv>/bin/gunicorn [options] <target>` (gunicorn reads the
project's gunicorn.conf.py from its working directory); the load and the image host run on CPU 1.
Standard library only: bench.imageserver imports it under the serving virtualenv.
"""

from __future__ import annotations

import http.client
import http.server
import json
import os
import random
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parents[1]
SERVICE_CPU, LOAD_CPU = "0", 1


def pin_load() -> None:
    """This process (the load, the clients) onto the load CPU, away from the service's."""
    os.sched_setaffinity(0, {LOAD_CPU})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_port_below_ephemeral() -> int:
    """A free loopback port below Linux's ephemeral range (32768 and up): after a flood, tens of
    thousands of the load's own client ports sit in TIME_WAIT, and one of them may be the port the
    next server wants to bind."""
    for port in random.sample(range(20000, 32000), 200):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000-32000")


def service_env(port: int, allowed_ports: str | int, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The deployed settings on `port`: 2 workers, fetching only from loopback on `allowed_ports`."""
    return {
        "PORT": str(port),
        "WEB_CONCURRENCY": "2",
        "NSFW_ALLOWED_NETWORKS": "127.0.0.1/32",
        "NSFW_ALLOWED_PORTS": str(allowed_ports),
        **(extra or {}),
    }


def stop(proc: subprocess.Popen[bytes], grace: float = 30) -> None:
    """SIGTERM, then SIGKILL if it is still there after `grace` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def status_kb(pid: int, key: str) -> int:
    """A kB figure of /proc/<pid>/status (VmRSS, VmHWM); 0 when the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class Gunicorn:
    """`gunicorn [options] target` from `venv`, pinned to the service CPU, with `env` over this
    process's environment (and the venv's bin first on PATH), in `cwd`; returns once /health answers
    200 (within `deadline` seconds, asked every `every` s); stopped by close() or the with block's end.
    Its output goes to a temporary log file whose name starts with `log` (removed at close), or nowhere."""

    def __init__(
        self,
        venv: Path,
        env: Mapping[str, str],
        *,
        target: str = "app:app",
        options: Sequence[str] = (),
        cwd: Path = REPO,
        log: str | None = None,
        deadline: float = 300,
        every: float = 0.01,
        probe_timeout: float = 2,
    ) -> None:
        self.target = target
        self.port = int(env["PORT"])
        self.base = f"http://127.0.0.1:{self.port}"
        self._log: IO[bytes] | None = None
        if log is not None:
            self._log = tempfile.NamedTemporaryFile(prefix=log, suffix=".log", delete=False)  # noqa: SIM115
        self.log_path = Path(self._log.name) if self._log is not None else None
        started = time.monotonic()
        self.proc = subprocess.Popen(
            ["taskset", "-c", SERVICE_CPU, str(venv / "bin" / "gunicorn"), *options, target],
            cwd=cwd,
            env={**os.environ, "PATH": f"{venv / 'bin'}:{os.environ['PATH']}", **env},
            stdout=subprocess.DEVNULL if self._log is None else self._log,
            stderr=subprocess.DEVNULL if self._log is None else subprocess.STDOUT,
        )
        try:
            while time.monotonic() - started < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{target} exited with {self.proc.returncode}{self._tail()}")
                if self.ask("GET", "/health", timeout=probe_timeout)[0] == 200:
                    self.cold_start_s = time.monotonic() - started  # process start to the first 200
                    return
                time.sleep(every)
            raise RuntimeError(f"{target} never became healthy{self._tail()}")
        except BaseException:
            self.close()
            raise

    def ask(
        self, method: str, path: str, body: bytes | None = None, *, source: str = "127.0.0.1", timeout: float = 20
    ) -> tuple[int, float]:
        """(status, seconds); status 0 when the connection failed or timed out."""
        started = time.monotonic()
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout, source_address=(source, 0))
        try:
            headers = {"Content-Type": "application/json"} if body is not None else {}
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            response.read()
            return response.status, time.monotonic() - started
        except (OSError, http.client.HTTPException):  # HTTPException: e.g. a self-connect while polling
            return 0, time.monotonic() - started
        finally:
            connection.close()

    def workers(self) -> list[int]:
        """The arbiter's children, from /proc."""
        return children(self.proc.pid)

    def pids(self) -> list[int]:
        """The arbiter, then its workers."""
        return [self.proc.pid, *children(self.proc.pid)]

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path is not None else ""

    def _tail(self) -> str:
        return f": {self.log_text()[-3000:]}" if self.log_path is not None else ""

    def close(self) -> None:
        stop(self.proc)
        if self._log is not None:
            self._log.close()
            Path(self._log.name).unlink(missing_ok=True)

    def __enter__(self) -> Gunicorn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Service(Gunicorn):
    """gunicorn app:app from a checkout, pinned to the service CPU, allowed to fetch the image host
    (and ports 80, 443), on a port below the ephemeral range; its output in a log file."""

    def __init__(self, checkout: Path, venv: Path, image_port: int, env: dict[str, str] | None = None) -> None:
        environment = service_env(free_port_below_ephemeral(), f"80,443,{image_port}", env)
        super().__init__(
            venv, environment, cwd=checkout, log="abuse-gunicorn-", deadline=120, every=0.05, probe_timeout=1
        )


@contextmanager
def image_server(python: str) -> Iterator[str]:
    """bench.imageserver in a process of its own on the load CPU; yields its base URL."""
    port_file = Path(tempfile.mkdtemp()) / "port"
    proc = subprocess.Popen(
        ["taskset", "-c", str(LOAD_CPU), python, "-m", "bench.imageserver", str(port_file)], cwd=REPO
    )
    try:
        deadline = time.monotonic() + 60
        while not port_file.exists() or not port_file.read_text():
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("image server did not start")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port_file.read_text()}"
    finally:
        stop(proc)


class QuietHandler(http.server.BaseHTTPRequestHandler):
    """HTTP/1.1 (keep-alive), nothing logged."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass


def serve_in_thread(
    handler: type[http.server.BaseHTTPRequestHandler],
    port: int = 0,
    server_class: type[http.server.ThreadingHTTPServer] = http.server.ThreadingHTTPServer,
) -> http.server.ThreadingHTTPServer:
    """A threaded HTTP server on 127.0.0.1 (port 0: any free one), serving from a daemon thread."""
    server = server_class(("127.0.0.1", port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def percentile(values: Sequence[float], p: float) -> float:
    """The value at rank int(n * p) of the sorted values (p=0.5: the median); NaN when there are none."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))] if ordered else float("nan")


def write_results(result: Any, out: Path | None, name: str) -> Path:
    """The figures as JSON at `out`, by default bench/results/<name>-<time>.json; returns where."""
    out = out or REPO / "bench" / "results" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return out


def write_json(path: Path | None, result: Any) -> None:
    """`--json PATH`: the results there, when asked for."""
    if path:
        path.write_text(json.dumps(result, indent=1) + "\n")
