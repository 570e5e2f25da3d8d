"""Deployment files agree with each other, lint clean, and start the service as deployed."""

from __future__ import annotations

import gzip
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.reference import Corpus
from tests.served import Gunicorn, _dockerfile, _get, health_probe
from tests.support import REPO, ImageServer, corpus_bytes, send, stream

RUN = "gunicorn app:app"


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
    assert conf["worker_class"] == "nsfw.web.frontend.Worker" and int(conf["threads"]) >= 24  # type: ignore[arg-type]
    assert conf["worker_tmp_dir"] == "/dev/shm" and conf["preload_app"] is False
    assert 30 <= int(conf["timeout"]) <= 120  # type: ignore[arg-type]
    conf = _gunicorn_conf({"PORT": "9000", "WEB_CONCURRENCY": "3"})
    assert conf["bind"] == "0.0.0.0:9000" and conf["workers"] == 3


_RETAINED = """
import ctypes, runpy, sys, threading
if sys.argv[1] == "hook":
    runpy.run_path("gunicorn.conf.py")["post_fork"](None, None)
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096
big = 16 << 20
out = []
def work():  # in a worker thread, whose malloc arena keeps freed memory
    first = libc.malloc(big); libc.free(first)
    before = rss()
    block = libc.malloc(big); ctypes.memset(block, 1, big)
    after = libc.malloc(1 << 16); ctypes.memset(after, 1, 1 << 16)
    libc.free(block)
    out.append(rss() - before)
t = threading.Thread(target=work); t.start(); t.join()
print(out[0])
"""


def test_workers_give_freed_images_back_to_the_os() -> None:
    """post_fork fixes glibc's mmap threshold: a 16 MiB buffer freed in a thread leaves the process
    even with a live allocation after it; without the hook it stays (the retention bench.serve saw)."""

    def retained(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", _RETAINED, mode], cwd=REPO, check=True, capture_output=True)
        return int(out.stdout)

    assert retained("default") > 8 << 20
    assert retained("hook") < 1 << 20


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


@pytest.fixture()
def deployed(start_gunicorn: Callable[..., Gunicorn]) -> tuple[str, str]:
    server = start_gunicorn()
    return server.base, server.python


@pytest.mark.slow
def test_deployed_service_predicts_and_stays_healthy_under_load(
    deployed: tuple[str, str], image_server: ImageServer, repo_reference: Corpus
) -> None:
    base, python = deployed
    image = image_server.add_file("/lighthouse.jpg", corpus_bytes("rocket.jpg"))
    status, scores = _get(f"{base}/predict?url={image}", method="POST")
    assert status == 200 and list(scores) == ["drawings", "hentai", "neutral", "porn", "sexy"]
    expected = repo_reference.images()["rocket.jpg"]
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


@pytest.mark.slow
def test_a_flood_gets_fast_503s_health_stays_up_and_a_dead_worker_is_replaced(
    start_gunicorn: Callable[..., Gunicorn], image_server: ImageServer
) -> None:
    """Real gunicorn on loopback, as deployed: 40 slow downloads at once against 2 workers x 4 slots."""
    drip = (b"x" for _ in range(10**9))
    image_server.routes["/slow.jpg"] = stream({"Content-Length": "100000"}, drip, delay=0.1)
    image_server.add_file("/lighthouse.jpg", corpus_bytes("rocket.jpg"))
    server = start_gunicorn({"NSFW_DOWNLOAD_TIMEOUT": "3"})
    slow_url = f"{server.base}/predict?url={image_server.url('/slow.jpg')}"
    answers: list[tuple[int, str, float, str | None]] = []
    health: list[tuple[int, float]] = []
    stop = threading.Event()

    def ask() -> None:
        started = time.monotonic()
        request = urllib.request.Request(slow_url, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                answers.append((response.status, "", time.monotonic() - started, None))
        except urllib.error.HTTPError as exc:
            code = json.loads(exc.read())["error"]["code"]
            answers.append((exc.code, code, time.monotonic() - started, exc.headers.get("Retry-After")))

    watcher = health_probe(server, stop, health, timeout=5)
    flood = [threading.Thread(target=ask) for _ in range(40)]
    for t in flood:
        t.start()
    for t in flood:
        t.join()

    # The dead-worker half: kill one worker outright; the arbiter must start another.
    before = server.workers()
    assert len(before) == 2, before
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        now = server.workers()
        if len(now) == 2 and victim not in now:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"no worker replaced {victim}: {server.workers()}\n{server.log.read_text()}")
    time.sleep(1.0)  # a few more health probes while the new worker loads its model
    stop.set()
    watcher.join()

    refused = [a for a in answers if a[0] == 503]
    assert {a[0] for a in answers} <= {503, 504}, answers
    assert len(refused) >= 40 - 2 * 4, answers  # at most NSFW_MAX_IN_FLIGHT per worker were admitted
    assert all(a[1] == "overloaded" and a[3] == "1" for a in refused)
    assert max(a[2] for a in refused) < 1.0, sorted(a[2] for a in refused)[-5:]
    assert all(a[2] < 3 + 1.5 for a in answers if a[0] == 504)  # admitted ones end at the deadline
    assert health and all(status == 200 for status, _ in health), [h for h in health if h[0] != 200]
    assert max(seconds for _, seconds in health) < 1.0, max(seconds for _, seconds in health)
    status, scores = _get(f"{server.base}/predict?url={image_server.url('/lighthouse.jpg')}", method="POST")
    assert status == 200 and len(scores) == 5


@pytest.mark.slow
def test_an_in_flight_limit_without_a_spare_thread_stops_the_boot(start_gunicorn: Callable[..., Gunicorn]) -> None:
    server = start_gunicorn({"NSFW_MAX_IN_FLIGHT": "8", "GUNICORN_THREADS": "8"}, wait_healthy=False)
    # The arbiter halts on the worker's boot error (3); with a second worker failing while it stops,
    # gunicorn 27 itself exits 1 with a HaltServer traceback. Either way: it stops, and says why.
    assert server.proc.wait(timeout=60) != 0
    log = server.log.read_text()
    assert "NSFW_MAX_IN_FLIGHT=8 needs more gunicorn threads than 8" in log and "Worker failed to boot" in log


@pytest.mark.slow
def test_the_deployed_service_answers_hostile_urls_and_keeps_its_workers(
    start_gunicorn: Callable[..., Gunicorn], image_server: ImageServer, tmp_path: Path
) -> None:
    """Probed from outside, as a stranger would: each answer right, no worker lost, no file left."""
    spill = tmp_path / "spill"
    spill.mkdir()
    image_server.routes["/to-metadata"] = send(302, b"", {"Location": "http://[::ffff:a9fe:a9fe]/latest/"})
    image_server.routes["/bomb"] = send(200, gzip.compress(b"\0" * (64 * 1024 * 1024)), {"Content-Encoding": "gzip"})
    image_server.add_file("/big.jpg", corpus_bytes("big_astronaut_4096.jpg"))  # spills to disk
    image_server.add_file("/cut.jpg", corpus_bytes("big_astronaut_4096.jpg")[:1_500_000])
    server = start_gunicorn({"TMPDIR": str(spill), "NSFW_DOWNLOAD_TIMEOUT": "2", "NSFW_READ_TIMEOUT": "1"})
    workers = server.workers()
    cases = [
        # 127.0.0.1/32 is opened for the image server here; its neighbours stay refused.
        ("http://017700000002/", 400, "url_not_allowed"),  # octal integer
        ("http://0x7F.2/", 400, "url_not_allowed"),
        ("http://[0:0:0:0:0:ffff:127.0.0.1]/", 400, "url_not_allowed"),
        ("http://[::127.0.0.1]/", 400, "url_not_allowed"),
        ("http://100.100.100.200/", 400, "url_not_allowed"),  # Alibaba metadata, CGNAT range
        ("http://[fd00:ec2::254]/", 400, "url_not_allowed"),
        (f"http://127.0.0.1:{image_server.port}@169.254.169.254/", 400, "invalid_url"),
        ("dict://127.0.0.1:11211/stats", 400, "url_scheme_not_allowed"),
        (image_server.url("/to-metadata"), 400, "url_not_allowed"),
        (image_server.url("/bomb"), 422, "image_too_large"),
        (image_server.url("/cut.jpg"), 422, "invalid_image"),
        (image_server.url("/big.jpg"), 200, None),
    ]
    for url, status, code in cases:
        query = urllib.parse.urlencode({"url": url})
        got, body = _get(f"{server.base}/predict?{query}", method="POST")
        assert (got, body.get("error", {}).get("code")) == (status, code), (url, body)
        assert _get(f"{server.base}/health", timeout=1)[0] == 200
    assert server.workers() == workers
    assert list(spill.iterdir()) == []
    # The detail the client never sees is in the log.
    assert "017700000002 is refused address 127.0.0.2" in server.log.read_text()


UNSEEN = REPO / "tests" / "data" / "unseen"


@pytest.mark.slow
def test_deployed_models_from_outside(start_gunicorn: Callable[..., Gunicorn], image_server: ImageServer) -> None:
    """GET /models lists the bundled models; ?model=inception_v3 matches nsfwjs's InceptionV3 on images
    that are in neither corpus (scripts/nsfwjs_reference.py --unseen); ?detail=true carries scores, verdict and
    model; the default stays the flat dict; NSFW-FLASK's /models/all/predict fetches once."""
    server = start_gunicorn({"NSFW_MODELS": "mobilenet_v2,inception_v3,open_nsfw"})
    status, listing = _get(f"{server.base}/models")
    assert status == 200
    models = {entry["name"]: entry for entry in listing["models"]}
    assert {"mobilenet_v2", "inception_v3", "open_nsfw"} <= {name for name, m in models.items() if m["served"]}
    assert models["inception_v3"]["input_size"] == 299 and models["open_nsfw"]["classes"] == ["sfw", "nsfw"]
    assert models["private_detector"]["served"] is False
    md = (REPO / "models" / "MODELS.md").read_text()
    for name, artifact in (("inception_v3", "inception_v3/model.npz"), ("open_nsfw", "open_nsfw/open-nsfw.onnx")):
        assert f"`{artifact}` | " in md and models[name]["sha256"] in md, name

    expected = json.loads((UNSEEN / "nsfwjs_inception_v3.json").read_text())["probs"]
    assert len(expected) == 8
    for name, probs in expected.items():
        url = image_server.add_file(f"/{name}", (UNSEEN / name).read_bytes())
        status, scores = _get(f"{server.base}/predict?model=inception_v3&url={url}", method="POST")
        assert status == 200 and list(scores) == ["drawings", "hentai", "neutral", "porn", "sexy"], scores
        assert np.abs(np.array(list(scores.values())) - probs).max() <= 1e-3, name

    url = image_server.add_file("/lighthouse.jpg", corpus_bytes("rocket.jpg"))
    status, detail = _get(f"{server.base}/predict?model=inception_v3&detail=true&url={url}", method="POST")
    assert status == 200 and set(detail["scores"]) == {"drawings", "hentai", "neutral", "porn", "sexy"}
    assert detail["verdict"]["label"] == "safe" and detail["verdict"]["reason"].startswith("drawings+neutral")
    assert detail["model"]["name"] == "inception_v3" and detail["model"]["backend"] == "onnxruntime"
    status, flat = _get(f"{server.base}/predict?url={url}", method="POST")
    assert status == 200 and list(flat) == ["drawings", "hentai", "neutral", "porn", "sexy"]

    hits_before = image_server.hits.count("/lighthouse.jpg")
    status, everything = _get(f"{server.base}/models/all/predict?url={url}", method="POST")
    assert status == 200 and image_server.hits.count("/lighthouse.jpg") == hits_before + 1
    assert set(everything) == {"nsfw_model", "inception_v3", "open_nsfw", "time"}
    assert everything["nsfw_model"] == flat and 0 <= everything["open_nsfw"] < 0.5
    status, one = _get(f"{server.base}/models/open_nsfw/predict?url={url}", method="POST")
    assert status == 200 and set(one) == {"open_nsfw", "time"} and one["open_nsfw"] == everything["open_nsfw"]
    status, refused = _get(f"{server.base}/models/private_detector/predict?url={url}", method="POST")
    assert status == 400 and refused["error"]["code"] == "model_not_served"


def test_the_do_specs_settings_boot() -> None:
    """Every NSFW_* value the App Platform spec sets is one the service takes (secrets are set later)."""
    import yaml

    from nsfw.config import Settings

    spec = yaml.safe_load((REPO / ".do" / "app.yaml").read_text())
    envs = {env["key"]: env["value"] for env in spec["services"][0]["envs"] if env.get("type") != "SECRET"}
    settings = Settings.from_env({key: value for key, value in envs.items() if key.startswith("NSFW_")})
    assert settings.rate_limit and settings.client_address_header == "DO-Connecting-IP"
    assert [str(network) for network in settings.trusted_proxies] == ["0.0.0.0/0", "::/0"]


def test_the_compose_file_runs_two_instances_on_shared_state() -> None:
    import ipaddress

    import yaml

    from nsfw.config import Settings

    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"web1", "web2", "nginx", "postgres", "redis"} <= set(services)
    assert services["web1"]["environment"] == services["web2"]["environment"]
    env = {k: str(v) for k, v in services["web1"]["environment"].items() if k.startswith("NSFW_")}
    env |= {"NSFW_API_KEYS": f"moderation:{'m' * 43}:review", "NSFW_SECRET_KEY": "s" * 40}
    settings = Settings.from_env(env)
    assert settings.redis_url and settings.database.startswith("postgresql+psycopg://") and settings.cache_size
    # Issue 22, finding 8 (fails before it: the whole 172.16.0.0/12 was trusted): nginx's own address.
    nginx_address = services["nginx"]["networks"]["default"]["ipv4_address"]
    assert [str(network) for network in settings.trusted_proxies] == [f"{nginx_address}/32"]
    subnet = compose["networks"]["default"]["ipam"]["config"][0]["subnet"]
    assert ipaddress.ip_address(nginx_address) in ipaddress.ip_network(subnet)
    nginx = (REPO / "deploy" / "nginx.conf").read_text()
    assert "proxy_request_buffering on" in nginx and "server web1:8080" in nginx and "server web2:8080" in nginx


def test_the_scaled_do_spec_has_two_instances_and_shared_stores() -> None:
    import yaml

    from nsfw.config import Settings

    spec = yaml.safe_load((REPO / ".do" / "app.scale.yaml").read_text())
    service = spec["services"][0]
    assert service["instance_count"] == 2 and {db["engine"] for db in spec["databases"]} == {"PG", "VALKEY"}
    envs = {env["key"]: env["value"] for env in service["envs"] if env.get("type") != "SECRET"}
    bound = {
        "${reviews.DATABASE_URL}": "postgresql://u:p@db:25060/reviews",
        "${cache.DATABASE_URL}": "rediss://u:p@c:25061",
    }
    env = {k: bound.get(v, v) for k, v in envs.items() if k.startswith("NSFW_")}
    env |= {"NSFW_API_KEYS": f"moderation:{'m' * 43}:review", "NSFW_SECRET_KEY": "s" * 40}
    settings = Settings.from_env(env)
    assert settings.review and settings.redis_url.startswith("rediss://")


def test_two_masters_on_one_host_each_keep_their_control_socket(
    start_gunicorn: Callable[..., Gunicorn], tmp_path: Path
) -> None:
    """Finding 10 of issue 22 (fails before it: every master of a user took gunicorn 27's default
    ~/.gunicorn/gunicorn.ctl, so a second instance on the host took it from the first). Each instance
    has its own, in its instance folder, and answers on it for its own workers."""
    import json
    import subprocess

    folders = [tmp_path / "one", tmp_path / "two"]
    servers = [start_gunicorn({"NSFW_INSTANCE_DIR": str(folder)}) for folder in folders]
    for folder, server in zip(folders, servers, strict=True):
        socket_path = folder / "gunicorn.ctl"
        assert socket_path.is_socket()
        gunicornc = str(Path(server.python).parent / "gunicornc")
        done = subprocess.run(
            [gunicornc, "-s", str(socket_path), "-c", "show workers", "-j"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr
        assert {worker["pid"] for worker in json.loads(done.stdout)["workers"]} == server.workers()


_WORKER_EXIT = """
import os, runpy, time, types
from nsfw import create_app
from nsfw.config import Settings
from nsfw.review.queue import ReviewQueue
from nsfw.store.engine import make_engine
from nsfw.store.migrate import upgrade
from tests.support import FakeClassifier
from tests.test_review import _enqueue
settings = Settings.from_env(os.environ)
upgrade(settings.database)
app = create_app(settings, FakeClassifier())
review = app.extensions["nsfw.review"]
review_id = _enqueue(review.queue, "a" * 64)
review.queue.decide(review_id, "alice", "adult")
(delivery,) = review.queue.deliveries()
review.sender._unmarked[delivery["id"]] = time.time()  # delivered; the store refused the mark then
runpy.run_path("gunicorn.conf.py")["worker_exit"](None, types.SimpleNamespace(wsgi=app))
after = ReviewQueue(make_engine(settings.database), lease=1, webhooks=True)
print(after.deliveries()[0]["status"], review.thread.is_alive())
"""


def test_a_worker_that_exits_marks_what_it_delivered(tmp_path: Path) -> None:
    """Found by the second review of issue 22: the marks a worker owed (delivered, the store refused the
    mark) were never made at its exit, as nothing called the review queue's close."""
    from tests.servers import free_port

    port = free_port()
    env = {
        "PATH": os.environ["PATH"],
        "NSFW_REVIEW": "true",
        "NSFW_DATA_DIR": str(tmp_path),
        "NSFW_API_KEYS": f"mod:{'m' * 43}:review",
        "NSFW_SECRET_KEY": "s" * 40,
        "NSFW_REVIEW_WEBHOOK_URL": f"http://127.0.0.1:{port}/hook",  # refused: never delivered by itself
        "NSFW_REVIEW_WEBHOOK_SECRET": "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "NSFW_ALLOWED_NETWORKS": "127.0.0.1/32",
        "NSFW_ALLOWED_PORTS": f"80,443,{port}",
    }
    done = subprocess.run(
        [sys.executable, "-c", _WORKER_EXIT], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["delivered", "False"]
