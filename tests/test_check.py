"""`python -m nsfw check FILE` (nsfw/check.py), the Matrix content scanner's script.

The scanner's side is element-hq/matrix-content-scanner-python `src/matrix_content_scanner/scanner/
scanner.py`: `_write_file_to_disk` puts the media at `temp_directory/<server_name>/<media_id>`, and
`_run_scan` runs `asyncio.create_subprocess_exec(self._script, file_name)` and reads the exit code
only: `result = exit_code == 0`, and an exit code in `exit_codes_to_ignore` is not cached. The tests
run the script the same way: an executable file as `scan.script`, the media's path its one argument.
"""

from __future__ import annotations

import asyncio
import http.server
import io
import json
import os
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from nsfw import check
from scripts import hostile_images as bombs
from tests.served import Gunicorn, call
from tests.support import REPO, corpus_bytes

MATRIX, MOD = "x" * 43, "m" * 43


def _media(tmp_path: Path, data: bytes, media_id: str = "AbCdEf") -> Path:
    """The file as the scanner writes it: temp_directory/<server_name>/<media_id>."""
    path = tmp_path / "scan" / "example.org" / media_id
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _run_scan(script: Path, file_name: Path) -> int:
    """What the scanner's `_run_scan` does: exec the script with the path, wait, take the exit code."""

    async def scan() -> int:
        process = await asyncio.create_subprocess_exec(str(script), str(file_name), stderr=asyncio.subprocess.PIPE)
        await process.communicate()
        return await process.wait()

    return asyncio.run(scan())


def _readme_wrapper() -> str:
    """The README's `scan.script` wrapper, as an operator pastes it."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start = text.index("    #!/bin/sh\n    cd /srv/nsfw-api")
    end = text.index("\n\n", start)
    return "\n".join(line.removeprefix("    ") for line in text[start:end].splitlines()) + "\n"


def _script(tmp_path: Path, name: str, *arguments: str) -> Path:
    """The README's wrapper for `scan.script` with this checkout's folder and serving python, and
    `arguments` instead of its --service and --key-file."""
    python = os.environ.get("TEST_SERVING_PYTHON", sys.executable)
    wrapper = _readme_wrapper()
    head, _ = wrapper.split(' "$1"', 1)
    text = head.replace("cd /srv/nsfw-api", f"cd {REPO}").replace(".venv-serve/bin/python", python)
    script = tmp_path / "bin" / name
    script.parent.mkdir(exist_ok=True)
    script.write_text(f'{text} "$1" {" ".join(arguments)}\n', encoding="utf-8")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


@pytest.mark.parametrize(
    ("thresholds", "flags", "code", "label"),
    [
        ({}, [], check.CLEAN, "safe"),  # the defaults: grace_hopper.jpg is safe
        ({"NSFW_ADULT_THRESHOLD": "0.0001", "NSFW_SAFE_THRESHOLD": "0.99999"}, [], check.ADULT, "adult"),
        ({"NSFW_ADULT_THRESHOLD": "0.5", "NSFW_SAFE_THRESHOLD": "0.9999"}, [], check.CLEAN, "unknown"),
        (
            {"NSFW_ADULT_THRESHOLD": "0.5", "NSFW_SAFE_THRESHOLD": "0.9999"},
            ["--unknown-is-adult"],
            check.ADULT,
            "unknown",
        ),
    ],
)
def test_in_process_the_verdict_is_the_exit_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, thresholds: dict[str, str], flags: list[str], code: int, label: str
) -> None:
    for name, value in thresholds.items():
        monkeypatch.setenv(name, value)
    err = io.StringIO()
    assert check.main([str(_media(tmp_path, corpus_bytes("grace_hopper.jpg"))), *flags], err) == code
    assert err.getvalue().endswith(f": {label}\n")


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda tmp: _media(tmp, b"%PDF-1.4 not an image"), "unsupported_image_format"),
        (lambda tmp: _media(tmp, b""), "invalid_image"),
        (lambda tmp: tmp / "example.org" / "gone", "FileNotFoundError"),
    ],
)
def test_in_process_what_cannot_be_classified_exits_2(tmp_path: Path, make: Callable[[Path], Path], why: str) -> None:
    err = io.StringIO()
    assert check.main([str(make(tmp_path))], err) == check.FAILED
    assert "not classified" in err.getvalue() and why in err.getvalue()


def test_the_scanner_runs_it_against_the_service_on_real_gunicorn(
    start_gunicorn: Callable[..., Gunicorn], tmp_path: Path
) -> None:
    """As element-hq/matrix-content-scanner-python runs `scan.script`: 0 clean, 1 adult, 2 error (listed in
    exit_codes_to_ignore). The service's limits and review queue apply: an unknown image is queued
    under the key's name, its ref the media's mxc:// name."""
    server = start_gunicorn(
        {
            "NSFW_API_KEYS": f"matrix:{MATRIX},moderator:{MOD}:review",
            "NSFW_REVIEW": "true",
            "NSFW_DATA_DIR": str(tmp_path / "data"),
            "NSFW_SECRET_KEY": "s" * 40,
            # Strict enough that a photo is neither: it goes to a human.
            "NSFW_ADULT_THRESHOLD": "0.9999",
            "NSFW_SAFE_THRESHOLD": "0.9999",
        }
    )
    key_file = tmp_path / "matrix.key"
    key_file.write_text(MATRIX + "\n")
    scan = _script(tmp_path, "scan", "--service", server.base, "--key-file", str(key_file))
    photo = _media(tmp_path, corpus_bytes("grace_hopper.jpg"), "GraceHopper")
    assert _run_scan(scan, photo) == check.CLEAN  # unknown is clean by default...
    strict = _script(tmp_path, "strict", "--service", server.base, "--key-file", str(key_file), "--unknown-is-adult")
    assert _run_scan(strict, photo) == check.ADULT  # ...or not, for rooms that want it

    status, body, _ = call(server, "GET", "/reviews", MOD)
    (item,) = json.loads(body)["items"]
    assert status == 200 and item["key"] == "matrix"
    assert {"ref": "mxc://example.org/GraceHopper", "key": "matrix"} in item["refs"]

    assert _run_scan(scan, _media(tmp_path, bombs.jpeg_flat(64, 48)[:200], "Cut")) == check.FAILED  # truncated: 422
    wrong = _script(tmp_path, "wrong", "--service", server.base, "--key", "w" * 43)
    assert _run_scan(wrong, photo) == check.FAILED  # 401
    gone = _script(tmp_path, "gone", "--service", "http://127.0.0.1:9")
    assert _run_scan(gone, photo) == check.FAILED  # nothing listens


def test_the_ref_is_the_medias_mxc_name_unless_the_service_would_refuse_it() -> None:
    assert check.media_ref(Path("/tmp/scan/example.org/AbCdEf")) == "mxc://example.org/AbCdEf"
    assert check.media_ref(Path("/tmp/scan/" + "s" * 250 + "/AbCdEf")) is None  # past 200 characters: a 400


class _Stub(http.server.BaseHTTPRequestHandler):
    """A service that answers badly: `/redirect` sends the client to /elsewhere (which says safe and
    records who came), `/odd` answers a verdict that is no object, `/drip` a safe verdict slowly."""

    seen: ClassVar[list[dict[str, str]]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path.startswith("/redirect/"):
            self.send_response(302)
            self.send_header("Location", "/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path.startswith("/odd/"):
            self._json(b'{"verdict": "adult"}')
        elif self.path.startswith("/drip/"):  # a safe verdict, a byte every 0.1 s: 3 s in all
            body = b'{"verdict": {"label": "safe"}}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            for byte in body:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(0.1)

    def do_GET(self) -> None:  # noqa: N802
        type(self).seen.append(dict(self.headers))
        self._json(b'{"verdict": {"label": "safe"}}')

    def _json(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def stub() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Stub.seen.clear()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    ("service", "extra"),
    [
        ("{stub}/redirect", ["--key", "k" * 43]),  # found by the review: the key went along, the answer was 0
        ("{stub}/odd", []),  # a verdict that is no object was a traceback: exit 1, "adult"
        ("{stub}/drip", ["--timeout", "1.5"]),  # each read within --timeout, the whole answer not: was 0
        ("localhost", []),  # no scheme: a ValueError, a traceback
    ],
)
def test_every_failure_is_2_never_0_nor_1(tmp_path: Path, stub: str, service: str, extra: list[str]) -> None:
    """Issue 24's review: a traceback exits 1, which the scanner remembers as adult, and a followed
    redirect sent the key to another place and classified nothing (exit 0)."""
    photo = _media(tmp_path, corpus_bytes("grace_hopper.jpg"))
    err = io.StringIO()
    assert check.main([str(photo), "--service", service.format(stub=stub), *extra], err) == check.FAILED
    assert "not classified" in err.getvalue()
    assert _Stub.seen == []  # nothing followed the redirect


def test_a_key_file_that_is_not_text_and_a_broken_model_are_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    photo = _media(tmp_path, corpus_bytes("grace_hopper.jpg"))
    key_file = tmp_path / "key"
    key_file.write_bytes(b"\xff\xfe\x00 not text")
    err = io.StringIO()
    assert check.main([str(photo), "--service", "http://127.0.0.1:9", "--key-file", str(key_file)], err) == 2
    empty = tmp_path / "models"
    empty.mkdir()
    monkeypatch.setenv("NSFW_MODELS_DIR", str(empty))  # no artifact: the runtime raises, not ConfigError
    assert check.main([str(photo)], err) == check.FAILED
