"""Test helpers: a local image server on 127.0.0.1 and a fake classifier."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nsfw.model.specs import MOBILENET_V2, ModelSpec

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO.parent / "shared" / "reference"
CORPUS = REFERENCE / "corpus"

Handler = Callable[[http.server.BaseHTTPRequestHandler], None]


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


def stream(headers: dict[str, str], pieces: Iterable[bytes], delay: float = 0.0) -> Handler:
    """A 200 that writes pieces one by one (a drip, an endless chunked body) until the client leaves."""

    def handle(req: http.server.BaseHTTPRequestHandler) -> None:
        req.send_response(200)
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

            def log_message(self, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

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
    probabilities: tuple[float, ...] = (0.1, 0.2, 0.3, 0.25, 0.15)
    seen: list[np.ndarray] = field(default_factory=list)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        self.seen.append(batch)
        return np.tile(np.asarray(self.probabilities, np.float32), (batch.shape[0], 1))


def corpus_bytes(name: str) -> bytes:
    return (CORPUS / name).read_bytes()
