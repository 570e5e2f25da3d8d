"""`python -m nsfw check FILE` (nsfw/check.py), the Matrix content scanner's script.

The scanner's side is element-hq/matrix-content-scanner-python `src/matrix_content_scanner/scanner/
scanner.py`: `_write_file_to_disk` puts the media at `temp_directory/<server_name>/<media_id>`, and
`_run_scan` runs `asyncio.create_subprocess_exec(self._script, file_name)` and reads the exit code
only: `result = exit_code == 0`, and an exit code in `exit_codes_to_ignore` is not cached. The tests
run the script the same way: an executable file as `scan.script`, the media's path its one argument.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path

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


def _script(tmp_path: Path, name: str, *arguments: str) -> Path:
    """The wrapper the README gives for `scan.script` (the scanner runs one executable, no arguments
    of its own): this checkout's python, `-m nsfw check`, the file, then `arguments`."""
    python = os.environ.get("TEST_SERVING_PYTHON", sys.executable)
    script = tmp_path / "bin" / name
    script.parent.mkdir(exist_ok=True)
    script.write_text(
        f'#!/bin/sh\ncd {REPO}\nexec {python} -m nsfw check "$1" {" ".join(arguments)}\n', encoding="utf-8"
    )
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
