"""From outside, through gunicorn: every request it cannot parse still gets our JSON error shape, and
the decoding bombs are answered without losing a worker.

One server per test (each start costs seconds); every case is a raw request on its own connection.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.parse
from collections.abc import Callable

from scripts import hostile_images as bombs
from tests.served import Gunicorn, _get
from tests.support import ImageServer

# (what is wrong, the raw request, the status we answer)
MALFORMED: list[tuple[str, bytes, int]] = [
    (
        "bad chunk size",
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
        400,
    ),
    (
        "bad chunk extension",
        b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2;\x01\r\n{}\r\n0\r\n\r\n",
        400,
    ),
    ("request line with extra words", b"GET /health HTTP/1.1 extra\r\nHost: x\r\n\r\n", 400),
    ("bad method token", b"G(T /health HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("unknown protocol version", b"GET /health HTTP/9.9\r\nHost: x\r\n\r\n", 400),
    ("header without a colon", b"GET /health HTTP/1.1\r\nHost: x\r\nNoColonHere\r\n\r\n", 400),
    ("space in a header name", b"GET /health HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n", 400),
    ("NUL in a header value", b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n", 400),
    (
        "two different lengths",
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        400,
    ),
    ("negative length", b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400),
    (
        "length and chunked",
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    ("unknown transfer coding", b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: br, chunked\r\n\r\n", 501),
    (
        "compressed transfer coding",
        b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        501,
    ),
    ("request line over 8190 bytes", b"GET /predict?url=" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    (
        "101 headers",
        b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(101)) + b"\r\n",
        431,
    ),
    ("a header over 8190 bytes", b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"y" * 9000 + b"\r\n\r\n", 431),
]


def _exchange(server: Gunicorn, data: bytes, *, read_all: bool = True) -> bytes:
    host, port = server.base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        try:
            sock.sendall(data)
        except OSError:
            pass  # the server may answer and close before it has read everything
        answer = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            answer += chunk
            if not read_all and b"\r\n\r\n" in answer:
                break
        return answer


def _parse(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line)}
    return int(lines[0].split()[1]), headers, body


def test_what_gunicorn_cannot_parse_is_answered_in_json(start_gunicorn: Callable[..., Gunicorn]) -> None:
    server = start_gunicorn()
    wrong = []
    for name, request, status in MALFORMED:
        got, headers, body = _parse(_exchange(server, request))
        shape_ok = headers.get("content-type") == "application/json" and set(json.loads(body)) == {"error"}
        if got != status or not shape_ok:
            wrong.append(f"{name}: {got} {headers.get('content-type')} {body[:80]!r}")
    assert not wrong, "\n".join(wrong)
    # gunicorn's messages quote the request line; its query never reaches the log.
    _exchange(server, b"GET /predict?url=http://a.example/x%3Fsig%3Dfeedc0de HTTP/1.1 extra\r\nHost: x\r\n\r\n")
    log = server.log.read_text()
    assert "Traceback" not in log and "[ERROR]" not in log, log[-3000:]
    assert "feedc0de" not in log and "server -> 400 bad_request" in log


def test_documented_limits_fit_and_bodies_are_refused_before_100_continue(
    start_gunicorn: Callable[..., Gunicorn],
) -> None:
    server = start_gunicorn()
    # A URL of the documented 2,048 characters, every character percent-encoded (6,144 bytes): read
    # whole by the app, which answers as for any unresolvable host (the test's DNS has no such name).
    url = "http://images.invalid/" + "a" * (2048 - len("http://images.invalid/"))
    encoded = "".join(f"%{b:02X}" for b in url.encode())
    status, headers, body = _parse(
        _exchange(server, f"GET /predict?url={encoded} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    )
    assert (status, json.loads(body)["error"]["code"]) == (400, "url_not_allowed")
    # One character more is the app's invalid_url, still JSON.
    status, _, body = _parse(
        _exchange(server, f"GET /predict?url={encoded}%61 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    )
    assert (status, json.loads(body)["error"]["code"]) == (400, "invalid_url")
    # Deep JSON through the whole stack.
    deep = ("[" * 50_000 + "]" * 50_000).encode()
    for route in ("/predict", "/predict/batch"):
        request = (
            f"POST {route} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(deep)}\r\nConnection: close\r\n\r\n"
        ).encode() + deep
        status, _, body = _parse(_exchange(server, request))
        assert (status, json.loads(body)["error"]["code"]) == (400, "invalid_json")
    # A form body over its 64 KiB cap, waiting for 100 Continue: 413 at once, and no 100 first.
    head = (
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        b"Expect: 100-continue\r\nContent-Length: 1000000\r\n\r\n"
    )
    answer = _exchange(server, head, read_all=False)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:100]
    # The access log keeps the path and the options, never the URL's query.
    signed = urllib.parse.quote("http://images.invalid/a.jpg?X-Amz-Signature=cafe1234secret", safe="")
    _exchange(
        server, f"GET /predict?url={signed}&detail=true HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    )
    log = server.log.read_text()
    assert "cafe1234secret" not in log and "GET /predict?url=REDACTED&detail=true HTTP/1.1" in log
    assert "Traceback" not in log, log[-3000:]


BOMBS = [
    ("gif canvas growth", bombs.gif_growing_canvas, 422, "image_too_large_to_decode"),
    ("mpo with 40 MP entries", bombs.mpo_big_entries, 200, None),
    ("16-bit grey png, 40 MP", bombs.png16_grey, 200, None),
    ("webp, 40 MP", bombs.webp_big, 422, "image_too_large_to_decode"),
    ("jpeg of repeated scans", bombs.jpeg_repeated_scans, 422, "image_too_complex"),
    ("webp of 130,000 frames", bombs.webp_many_frames, 200, None),
    ("rle bmp of 2.5 M runs", bombs.bmp_rle8, 422, "image_too_complex"),
]


def test_decoding_bombs_from_outside_keep_every_worker(
    start_gunicorn: Callable[..., Gunicorn], image_server: ImageServer
) -> None:
    """The default deployment (bench/hostile.py measures the memory and CPU of the same files)."""
    for name, make, _, _ in BOMBS:
        image_server.add_file("/" + name.replace(" ", "_"), make())
    server = start_gunicorn()
    workers = server.workers()
    wrong = []
    for name, _, status, code in BOMBS:
        query = urllib.parse.urlencode({"url": image_server.url("/" + name.replace(" ", "_"))})
        got, body = _get(f"{server.base}/predict?{query}", method="POST", timeout=30)
        if (got, body.get("error", {}).get("code")) != (status, code):
            wrong.append(f"{name}: {got} {body}")
    assert not wrong, "\n".join(wrong)
    assert server.workers() == workers
    assert "Traceback" not in server.log.read_text()


def test_with_keys_a_stranger_is_401_and_a_key_holder_served(
    start_gunicorn: Callable[..., Gunicorn], image_server: ImageServer
) -> None:
    url = image_server.add_file("/a.jpg", bombs.jpeg_flat(64, 48))
    token = "k" * 43
    server = start_gunicorn({"NSFW_API_KEYS": f"app:{token}"})
    query = urllib.parse.urlencode({"url": url})
    status, body = _get(f"{server.base}/predict?{query}", method="POST")
    assert (status, body["error"]["code"]) == (401, "unauthorized")
    request = f"POST /predict?{query} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    status, headers, answer = _parse(_exchange(server, request.encode()))
    assert status == 200 and "neutral" in json.loads(answer)
    assert _get(f"{server.base}/health")[0] == 200
    log = server.log.read_text()
    assert token not in log and "NSFW_API_KEYS is empty" not in log


def test_an_open_service_says_so_once_at_boot_and_ids_every_answer(start_gunicorn: Callable[..., Gunicorn]) -> None:
    server = start_gunicorn()
    assert server.log.read_text().count("NSFW_API_KEYS is empty") == 1
    for path, rid in (("/health", "probe-7"), ("/models", "models-8"), ("/nowhere", "lost-9")):
        request = f"GET {path} HTTP/1.1\r\nHost: x\r\nX-Request-Id: {rid}\r\nConnection: close\r\n\r\n"
        _, headers, _ = _parse(_exchange(server, request.encode()))
        assert headers["x-request-id"] == rid, path
    _, headers, _ = _parse(_exchange(server, b"GET /models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
    made = headers["x-request-id"]
    assert len(made) == 32
    time.sleep(0.2)  # the access log line is written after the answer
    log = server.log.read_text()
    assert all(f'" {rid}' in log for rid in ("models-8", "lost-9", made)), log[-2000:]


def test_metrics_count_every_answer_of_both_workers(
    start_gunicorn: Callable[..., Gunicorn], image_server: ImageServer
) -> None:
    url = image_server.add_file("/m.jpg", bombs.jpeg_flat(64, 48))
    server = start_gunicorn()
    query = urllib.parse.urlencode({"url": url})
    answered = [_get(f"{server.base}/predict?{query}", method="POST")[0] for _ in range(12)]
    answered += [_get(f"{server.base}/models")[0] for _ in range(12)]
    assert answered == [200] * 24
    request = b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    status, headers, text = _parse(_exchange(server, request))
    assert status == 200 and headers["content-type"].startswith("text/plain")
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.decode().splitlines()
        if line and not line.startswith("#")
    }
    assert samples['nsfw_http_requests_total{method="POST",route="/predict",status="200"}'] == 12
    assert samples['nsfw_http_requests_total{method="GET",route="/models",status="200"}'] == 12
    assert samples['nsfw_predictions_total{model="mobilenet_v2",verdict="none"}'] == 12
    assert samples['nsfw_stage_duration_seconds_count{model="-",stage="fetch"}'] == 12
    assert any(name.startswith('nsfw_model_info{name="mobilenet_v2"') for name in samples)


def test_a_limit_holds_across_both_workers(start_gunicorn: Callable[..., Gunicorn]) -> None:
    """Each request on a new connection, so both workers answer some: exactly 7 of 12 get through."""
    server = start_gunicorn({"NSFW_RATE_LIMIT": "7/minute"})
    statuses = [_get(f"{server.base}/models")[0] for _ in range(12)]
    assert sorted(statuses) == [200] * 7 + [429] * 5 and statuses[:7] == [200] * 7
    answered_by = {line.split("]")[1] for line in server.log.read_text().splitlines() if "429 rate_limited" in line}
    assert answered_by  # the refusals are logged, with the worker's pid


def test_json_logs_carry_the_request_id_key_route_status_duration_and_verdict(
    start_gunicorn: Callable[..., Gunicorn], image_server: ImageServer
) -> None:
    url = image_server.add_file("/j.jpg", bombs.jpeg_flat(64, 48))
    token = "j" * 43
    server = start_gunicorn(
        {"NSFW_LOG_FORMAT": "json", "NSFW_API_KEYS": f"app:{token}", "NSFW_TRUSTED_PROXIES": "127.0.0.0/8"}
    )
    query = urllib.parse.urlencode({"url": url, "detail": "true"})
    request = (
        f"POST /predict?{query} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
        "X-Request-Id: json-1\r\nX-Forwarded-For: 198.51.100.7\r\nConnection: close\r\n\r\n"
    )
    status, _, answer = _parse(_exchange(server, request.encode()))
    assert status == 200
    verdict = json.loads(answer)["verdict"]["label"]
    stranger = b"GET /models?secret=s3 HTTP/1.1\r\nHost: x\r\nX-Request-Id: json-2\r\nConnection: close\r\n\r\n"
    assert _parse(_exchange(server, stranger))[0] == 401
    time.sleep(0.3)  # the access log line is written after the answer
    lines = server.log.read_text().splitlines()
    # Every line of ours and gunicorn's is JSON; LiteRT's C++ runtime prints one line of its own.
    records = [json.loads(line) for line in lines if not line.startswith("INFO: Created TensorFlow Lite")]
    access = {record.get("request_id"): record for record in records if record.get("logger") == "gunicorn.access"}
    served = access["json-1"]
    assert served["key"] == "app" and served["route"] == "/predict" and served["status"] == 200
    assert served["verdict"] == verdict and served["duration_ms"] > 0
    assert served["client"] == "198.51.100.7" and served["peer"] == "127.0.0.1"
    assert "url=REDACTED" in served["path"] and url not in json.dumps(records)
    refused = access["json-2"]
    assert (refused["status"], refused["key"], refused["route"]) == (401, "-", "/models")
    assert "s3" not in refused["path"]
    app_lines = [record for record in records if record.get("logger", "").startswith("nsfw")]
    assert any(record["request_id"] == "json-2" for record in app_lines)
    assert token not in server.log.read_text()
