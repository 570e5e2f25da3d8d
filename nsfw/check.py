"""`python -m nsfw check FILE`: one file -> an exit code, for the Matrix content scanner.

element-hq/matrix-content-scanner-python (`src/matrix_content_scanner/scanner/scanner.py`, `_run_scan`)
runs its `scan.script` with the downloaded (and decrypted) file's path as the only argument, under
`temp_directory/<server_name>/<media_id>`, and reads nothing but the exit code: 0 is clean, anything
else is not, and the codes in `result_cache.exit_codes_to_ignore` are not cached. So:

- 0: the verdict is safe or unknown (`--unknown-is-adult`: unknown is 1);
- 1: adult;
- 2: the file could not be classified (unreadable, not an image, the service down or refusing):
  the scanner blocks the file, and an operator lists 2 in `exit_codes_to_ignore` so that it is asked
  again next time rather than remembered.

The verdict is the service's (NSFW_ADULT_THRESHOLD, NSFW_SAFE_THRESHOLD). With `--service URL` the
file goes to that running service (`POST /predict?detail=true`, the key from `--key` or `--key-file`),
so its limits, metrics and review queue apply: an unknown image is queued under the key's name with
`mxc://<server_name>/<media_id>` as its ref. Without it the model runs in this process (slower to
start: it loads the model for one file). One line on stderr says what was decided, or why not.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import secrets
import signal
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TextIO

CLEAN, ADULT, FAILED = 0, 1, 2
TIMEOUT_SECONDS = 30.0
CHUNK_BYTES = 64 * 1024


class CheckFailed(Exception):
    """The file could not be classified; the message says why (exit 2)."""


def main(argv: Sequence[str], err: TextIO = sys.stderr) -> int:
    parser = argparse.ArgumentParser(prog="python -m nsfw check", description=__doc__.split("\n\n")[0])
    parser.add_argument("file", type=Path, help="the file to classify")
    parser.add_argument("--service", help="a running service's base URL (http://host:8080); else in-process")
    parser.add_argument("--key", default=None, help="an API key's token for --service (visible in `ps`)")
    parser.add_argument("--key-file", type=Path, default=None, help="a file holding the token (not in `ps`)")
    parser.add_argument("--unknown-is-adult", action="store_true", help="exit 1 for unknown too")
    parser.add_argument("--timeout", type=_seconds, default=TIMEOUT_SECONDS, help="seconds for the whole check")
    args = parser.parse_args(argv)
    # The scanner waits for its script without a limit, one of its scan slots held meanwhile: the
    # whole check (a service that drips its answer, a FIFO given as the file) ends by --timeout.
    signal.signal(signal.SIGALRM, _out_of_time)
    signal.setitimer(signal.ITIMER_REAL, args.timeout)
    try:
        label = _remote(args) if args.service else _local(args.file)
    except CheckFailed as exc:
        return _not_classified(err, args.file, str(exc))
    except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - a traceback exits 1, which reads as "adult"
        return _not_classified(err, args.file, f"{type(exc).__name__}: {exc}")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    adult = label == "adult" or label == "unknown" and args.unknown_is_adult
    err.write(f"nsfw check {args.file}: {label}\n")
    return ADULT if adult else CLEAN


def _seconds(raw: str) -> float:
    value = float(raw)
    if not 0 < value <= 3600:  # also refuses nan
        raise argparse.ArgumentTypeError("must be in (0, 3600] seconds")
    return value


def _out_of_time(signum: int, frame: object) -> None:
    raise CheckFailed("the check did not end within --timeout")


def _not_classified(err: TextIO, path: Path, why: str) -> int:
    err.write(f"nsfw check {path}: not classified: {why}\n")
    return FAILED


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer we refuse (exit 2): following it would send the key elsewhere (urllib
    keeps Authorization) and turn the upload into a GET that classifies nothing."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def _local(path: Path) -> str:
    """The verdict of the model in this process, under the same settings (NSFW_*) and limits."""
    from nsfw import errors
    from nsfw.config import ConfigError, Settings
    from nsfw.model import load_classifier
    from nsfw.pipeline.service import Ask, build_service
    from nsfw.pipeline.verdict import Policy

    try:
        settings = Settings.from_env(os.environ)
        service = build_service(settings)
        service.models.set_one(load_classifier(settings))
    except ConfigError as exc:
        raise CheckFailed(str(exc)) from None
    try:
        with path.open("rb") as body:
            prediction = service.predict_image(body, Ask(policy=Policy.of(settings)))
    except OSError as exc:
        raise CheckFailed(f"{type(exc).__name__}: {exc.strerror or exc}") from None
    except errors.NsfwError as exc:
        raise CheckFailed(f"{exc.code}: {exc.detail or exc.message}") from None
    assert prediction.verdict is not None
    return prediction.verdict.label


def _token(args: argparse.Namespace) -> str | None:
    if args.key_file is not None:
        try:
            return args.key_file.read_text().strip()
        except OSError as exc:
            raise CheckFailed(f"--key-file: {exc.strerror or exc}") from None
    return args.key


def _remote(args: argparse.Namespace) -> str:
    """The verdict of the service at args.service, the file sent as a multipart upload."""
    url = f"{args.service.rstrip('/')}/predict?detail=true"
    ref = media_ref(args.file)
    if ref is not None:
        url += f"&ref={urllib.parse.quote(ref, safe='')}"
    token = _token(args)
    boundary = "nsfw-check-" + secrets.token_hex(12)
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="file"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    try:
        size = args.file.stat().st_size
        file = args.file.open("rb")
    except OSError as exc:
        raise CheckFailed(f"{type(exc).__name__}: {exc.strerror or exc}") from None

    def body() -> Iterator[bytes]:  # streamed: a big file is never in memory whole
        yield head
        while chunk := file.read(CHUNK_BYTES):
            yield chunk
        yield tail

    with file:
        request = urllib.request.Request(url, data=body(), method="POST")
        request.add_header("Content-Type", f"multipart/form-data; boundary={boundary}")
        request.add_header("Content-Length", str(len(head) + size + len(tail)))
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        # No proxy from the environment, no redirect followed.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirects())
        try:
            with opener.open(request, timeout=args.timeout) as answer:
                payload = json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            raise CheckFailed(f"{exc.code} {_error_code(exc.read())}") from None
        except (OSError, ValueError, http.client.HTTPException) as exc:  # refused, timed out, cut, not JSON
            raise CheckFailed(f"{args.service}: {type(exc).__name__}: {exc}") from None
    verdict = payload.get("verdict") if isinstance(payload, dict) else None
    label = verdict.get("label") if isinstance(verdict, dict) else None
    if label not in ("adult", "unknown", "safe"):
        raise CheckFailed(f"{args.service} answered no verdict")
    return str(label)


# What the service takes as a ref (nsfw/web/api.py): 1-200 printable characters.
MAX_REF = 200


def media_ref(path: Path) -> str | None:
    """`mxc://<server_name>/<media_id>` from the path the scanner wrote the file to (its last two
    parts): the media's own name, for the moderator. None when the service would refuse it as a ref
    (a server name can be 255 characters): the file is still classified, only without a ref."""
    ref = f"mxc://{path.parent.name}/{path.name}"
    return ref if len(ref) <= MAX_REF and ref.isprintable() else None


def _error_code(raw: bytes) -> str:
    try:
        return str(json.loads(raw)["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return "(not the service's error shape)"
