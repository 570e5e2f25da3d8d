"""Test helpers: a local image server on 127.0.0.1, a fake classifier, and the probes hostile-input
tests use (a connection tripwire, a memory watch, a leak check)."""

from __future__ import annotations

import http.server
import io
import os
import resource
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from nsfw import errors
from nsfw.model.specs import MOBILENET_V2, ModelSpec

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "tests" / "data" / "reference" / "corpus"
# Stand-ins the tests use by name: an ordinary photo, and a 4096x4096 JPEG (made, not committed).
PHOTO = "rocket.jpg"
BIG_JPEG = "big_astronaut_4096.jpg"

Handler = Callable[[http.server.BaseHTTPRequestHandler], None]


# Words that would mean an upstream body, an address or an exception reached the client.
LEAKS = ("127.0.0.1", "169.254", "10.0.0", "secret", "Traceback", "Error:", "urllib3", "requests", "PIL", "/tmp")


MESSAGES = {cls.code: cls.message for cls in errors.every_error()}


def send(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> Handler:
    """A route answering a fixed status, body and headers."""

    def handle(req: http.server.BaseHTTPRequestHandler) -> None:
        req.send_response(status)
        all_headers = {"Content-Length": str(len(body)), "Content-Type": "image/jpeg", **(headers or {})}
        for name, value in all_headers.items():
            req.send_header(name, value)
        req.end_headers()
        req.wfile.write(body)

    return handle


def stream(headers: dict[str, str], pieces: Iterable[bytes], delay: float = 0.0, status: int = 200) -> Handler:
    """A response that writes pieces one by one (a drip, an endless body) until the client leaves."""

    def handle(req: http.server.BaseHTTPRequestHandler) -> None:
        req.send_response(status)
        for name, value in headers.items():
            req.send_header(name, value)
        req.end_headers()
        try:
            for piece in pieces:
                req.wfile.write(piece)
                req.wfile.flush()
                time.sleep(delay)
        except OSError:
            pass  # the client gave up, as it should

    return handle


def never_answer(req: http.server.BaseHTTPRequestHandler) -> None:
    """Reads the request, then says nothing until the client leaves."""
    req.connection.settimeout(30)
    try:
        req.connection.recv(1)  # returns when the client closes (or after 30 s)
    except OSError:
        pass


def drip_headers(delay: float) -> Handler:
    """A status line, then one header byte every `delay` seconds, forever: no body ever starts."""

    def handle(req: http.server.BaseHTTPRequestHandler) -> None:
        try:
            req.wfile.write(b"HTTP/1.1 200 OK\r\nX-Drip: ")
            while True:
                req.wfile.write(b"a")
                req.wfile.flush()
                time.sleep(delay)
        except OSError:
            pass

    return handle


class ImageServer:
    """A threaded HTTP server on 127.0.0.1; routes map a path to a handler (misbehaving ones too)."""

    def __init__(self) -> None:
        self.routes: dict[str, Handler] = {}
        self.hits: list[str] = []
        routes, hits = self.routes, self.hits

        class _Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                hits.append(self.path)
                handler = routes.get(self.path.split("?", 1)[0])
                if handler is None:
                    send(404, b"<html>secret upstream page</html>", {"Content-Type": "text/html"})(self)
                else:
                    handler(self)

            do_POST = do_GET  # noqa: N815 - routes see the method in req.command

            def log_message(self, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        # A short poll interval: shutdown() waits up to one interval, at every test's teardown.
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def add_file(self, path: str, data: bytes, content_type: str = "image/jpeg") -> str:
        self.routes[path] = send(200, data, {"Content-Type": content_type})
        return self.url(path)

    def __enter__(self) -> ImageServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


@dataclass
class FakeClassifier:
    """Returns fixed probabilities and records what it was given."""

    spec: ModelSpec = MOBILENET_V2
    backend: str = "fake"
    path: Path = REPO / "models" / "mobilenet_v2" / "model.tflite"
    probabilities: tuple[float, ...] = (0.1, 0.2, 0.3, 0.25, 0.15)
    seen: list[np.ndarray] = field(default_factory=list)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        self.seen.append(batch)
        return np.tile(np.asarray(self.probabilities, np.float32), (batch.shape[0], 1))


def encode(img: Image.Image, fmt: str, **options: object) -> bytes:
    """The image saved in `fmt` (Pillow's save options), as bytes."""
    out = io.BytesIO()
    img.save(out, fmt, **options)
    return out.getvalue()


def corpus_bytes(name: str) -> bytes:
    """A file of the repository's corpus, or one of the big variants made from it."""
    from tests.reference import corpus

    return corpus("repo").image_bytes(name)


class Tripwire:
    """Records every outgoing connect of this process; `only` lists the addresses allowed through,
    any other is refused before it leaves the machine (and recorded)."""

    def __init__(self, only: tuple[tuple[str, int], ...] = ()) -> None:
        self.only = only
        self.attempts: list[object] = []
        self.refused: list[object] = []
        self._real = socket.socket.connect

    def install(self, monkeypatch: object) -> Tripwire:
        tripwire = self

        def connect(sock: socket.socket, address: object) -> None:
            tripwire.attempts.append(address)
            if isinstance(address, tuple) and tuple(address[:2]) in tripwire.only:
                return tripwire._real(sock, address)
            tripwire.refused.append(address)
            raise ConnectionRefusedError(f"tripwire: no connection to {address!r} in tests")

        monkeypatch.setattr(socket.socket, "connect", connect)  # type: ignore[attr-defined]
        monkeypatch.setattr(socket.socket, "connect_ex", connect)  # type: ignore[attr-defined]
        return self


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class MemoryWatch:
    """Peak resident memory growth of this process while the block runs: sampled every millisecond,
    and cross-checked with the kernel's high-water mark, which catches spikes between samples."""

    def __init__(self) -> None:
        self.growth = 0
        self._stop = threading.Event()

    def __enter__(self) -> MemoryWatch:
        self._base = rss_bytes()
        self._peak = self._base
        self._high_water = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self._peak = max(self._peak, rss_bytes())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        high_water = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        peak = max(self._peak, high_water if high_water > self._high_water else 0)
        self.growth = peak - self._base


def files_open_under(folder: Path) -> list[str]:
    """Paths of this process's open descriptors inside folder (deleted temporary files included)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        if target.startswith(str(folder)):
            found.append(target)
    return found
