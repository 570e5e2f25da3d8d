"""Videos (nsfw/imaging/video.py, videochild.py; issue 25): made here with PyAV's encoders
(scripts/hostile_videos.py), a known frame at a known time that the model scores differently from the
rest (microaneurysms.png, porn 0.86, among grace_hopper.jpg's neutral 0.998)."""

from __future__ import annotations

import io
import json
import os
import signal
import stat
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from PIL import Image

from bench.harness import children
from nsfw import create_app
from nsfw.cache import Entry
from nsfw.config import Settings, parse_api_keys
from nsfw.errors import VideoTooComplex
from nsfw.imaging import video
from nsfw.model import Classifier
from nsfw.store.migrate import upgrade
from scripts import hostile_videos as videos
from tests.served import Gunicorn, call
from tests.support import ImageServer, corpus_bytes

SAFE = Image.open(io.BytesIO(corpus_bytes("grace_hopper.jpg"))).convert("RGB")
ADULT = Image.open(io.BytesIO(corpus_bytes("microaneurysms.png"))).convert("RGB")
MARK = (5.0, 6.0)  # the adult frames' time in an 8 s clip: 16 samples, one every 0.5 s
SAMPLE = 8.0 / 16


def _marked(codec: str = "h264", container: str = "mp4", **options: object) -> bytes:
    return videos.marked_clip(SAFE, ADULT, MARK, seconds=8.0, codec=codec, container=container, **options)


@pytest.fixture()
def client(settings: Settings, litert: Classifier) -> FlaskClient:
    return create_app(settings, litert).test_client()


def _post(client: FlaskClient, data: bytes, content_type: str = "video/mp4", query: str = "?detail=true") -> dict:
    """POST the video as a raw body; with no data, GET (a ?url= in the query)."""
    if data:
        answer = client.post(f"/predict{query}", data=data, content_type=content_type)
    else:
        answer = client.get(f"/predict{query}")
    return {"status": answer.status_code, **(answer.json or {})}


def _no_leftovers() -> None:
    """No copy of a video left in the temporary folder, no decoder still running."""
    assert not list(Path(tempfile.gettempdir()).glob("nsfw-video-*"))
    children = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read_text().split()
    assert not [pid for pid in children if "videochild" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")]


@pytest.mark.parametrize(
    ("codec", "container"),
    [
        ("h264", "mp4"),
        ("h264", "mov"),
        ("hevc", "mp4"),
        ("av1", "mp4"),
        ("vp8", "webm"),
        ("vp9", "webm"),
        ("av1", "webm"),
        ("h264", "matroska"),
    ],
)
def test_the_marked_frame_decides_in_every_container_and_codec(client: FlaskClient, codec: str, container: str) -> None:
    """The worst frame is the answer, its time within one sample of the mark; the scan stops there
    (NSFW_VIDEO_EARLY_STOP); the Content-Type is never believed (every clip is sent as video/mp4)."""
    answer = _post(client, _marked(codec, container))
    assert answer["status"] == 200, answer
    assert answer["verdict"]["label"] == "adult"
    assert answer["video"]["codec"] == codec and answer["video"]["duration_s"] == pytest.approx(8.0, abs=0.3)
    classified = answer["frames"]["classified"]
    chosen = next(frame for frame in classified if frame["index"] == answer["frames"]["chosen"])
    assert MARK[0] - SAMPLE <= chosen["time_s"] <= MARK[1] + SAMPLE, classified
    assert chosen == classified[-1]  # nothing after the adult frame was decoded
    assert [frame["time_s"] for frame in classified] == sorted(frame["time_s"] for frame in classified)
    assert answer["scores"] == chosen["scores"]
    _no_leftovers()


def test_without_early_stop_every_sample_is_judged_and_the_flat_answer_is_the_worst(
    settings: Settings, litert: Classifier
) -> None:
    client = create_app(replace(settings, video_early_stop=False), litert).test_client()
    data = _marked("vp9", "webm")
    answer = _post(client, data)
    times = [frame["time_s"] for frame in answer["frames"]["classified"]]
    # A keyframe a second, a sample every 0.5 s: the keyframes, and the frames between them that the
    # second pass decodes for the samples no keyframe is near.
    assert times == [t / 2 for t in range(16)]
    flat = _post(client, data, query="")
    chosen = answer["frames"]["classified"][answer["frames"]["chosen"]]
    assert flat == {"status": 200, **chosen["scores"]} and MARK[0] <= chosen["time_s"] < MARK[1]


def test_a_video_comes_in_every_way_an_image_does(
    client: FlaskClient, image_server: ImageServer, settings: Settings
) -> None:
    """By URL (whatever the host says its type is), as a multipart upload, as a batch item."""
    data = _marked("vp9", "webm")
    url = image_server.add_file("/clip.bin", data, "image/jpeg")
    assert _post(client, b"", query=f"?detail=true&url={url}")["verdict"]["label"] == "adult"
    upload = client.post(
        "/predict?detail=true", data={"image": (io.BytesIO(data), "clip.webm")}, content_type="multipart/form-data"
    )
    assert upload.status_code == 200 and upload.json["video"]["codec"] == "vp9"
    batch = client.post("/predict/batch?detail=true", json={"items": [{"url": url}]})
    assert batch.json["results"][0]["verdict"]["label"] == "adult"


def _hostile(name: str) -> bytes:
    return videos.HOSTILE[name]()


@pytest.mark.parametrize(
    ("name", "status", "code"),
    [
        ("declared_huge_frame.webm", 200, None),  # the frames are 64 x 48, as the stream says
        ("ten_hours_of_one_frame.mp4", 422, "video_too_long"),
        ("many_streams.webm", 422, "video_too_complex"),
        ("moov_that_lies.mp4", 422, "invalid_video"),
        ("live.webm", 200, None),
        ("many_reference_frames.mp4", 200, None),
        ("zip.mp4", 422, "invalid_image"),
        ("png.mp4", 200, None),  # an image, read as one
    ],
)
def test_each_hostile_video_is_a_4xx_of_its_own_or_a_200_on_what_could_be_read(
    client: FlaskClient, name: str, status: int, code: str | None
) -> None:
    started = time.monotonic()
    answer = _post(client, _hostile(name))
    assert answer["status"] == status, answer
    if code is not None:
        assert answer["error"]["code"] == code
    assert time.monotonic() - started < 20  # NSFW_VIDEO_TIMEOUT
    _no_leftovers()


def test_a_live_stream_without_a_duration_is_sampled_from_its_start(client: FlaskClient) -> None:
    answer = _post(client, _hostile("live.webm"))
    assert answer["video"]["duration_s"] is None and len(answer["frames"]["classified"]) == 4


def test_a_valid_header_before_garbage_answers_what_it_could_read(client: FlaskClient) -> None:
    """Random bytes where the media was: the decoder makes what it can of them, or nothing."""
    answer = _post(client, _hostile("header_then_garbage.mp4"))
    assert answer["status"] == 200 or answer["error"]["code"] == "invalid_video", answer
    _no_leftovers()


def test_ten_hours_are_sampled_by_seeking_when_the_operator_allows_them(settings: Settings, litert: Classifier) -> None:
    client = create_app(replace(settings, max_video_seconds=40_000.0), litert).test_client()
    started = time.monotonic()
    answer = _post(client, _hostile("ten_hours_of_one_frame.mp4"))
    assert answer["status"] == 200 and answer["video"]["duration_s"] == pytest.approx(36_001, abs=2)
    # Every sample's seek finds the first keyframe, far before it: the second pass decodes on from
    # there and finds the frame at 10 h (two frames' work, not 10 hours').
    assert [frame["time_s"] for frame in answer["frames"]["classified"]] == [0.0, 36_000.0]
    assert time.monotonic() - started < 5


def test_an_endless_video_stops_at_the_video_cap(
    settings: Settings, litert: Classifier, image_server: ImageServer
) -> None:
    """An endless WebM from its host: the download stops at NSFW_MAX_VIDEO_BYTES."""
    head = _hostile("live.webm")

    def endless(request: object) -> None:
        handler = request  # http.server's handler
        handler.send_response(200)  # type: ignore[attr-defined]
        handler.send_header("Content-Type", "video/webm")  # type: ignore[attr-defined]
        handler.end_headers()  # type: ignore[attr-defined]
        try:
            handler.wfile.write(head)  # type: ignore[attr-defined]
            while True:
                handler.wfile.write(b"\x00" * 65536)  # type: ignore[attr-defined]
        except OSError:
            pass

    image_server.routes["/live.webm"] = endless
    client = create_app(replace(settings, max_video_bytes=1 << 20, download_timeout=5.0), litert).test_client()
    answer = _post(client, b"", query=f"?url={image_server.url('/live.webm')}")
    assert answer["status"] == 422 and answer["error"]["code"] == "image_too_large", answer


def test_an_image_past_its_cap_is_still_refused_while_a_video_may_be_larger(
    settings: Settings, litert: Classifier, image_server: ImageServer
) -> None:
    data = _marked("vp9", "webm")
    small = replace(settings, max_bytes=len(data) // 2)
    client = create_app(small, litert).test_client()
    url = image_server.add_file("/clip.webm", data, "video/webm")
    assert _post(client, b"", query=f"?url={url}")["status"] == 200
    big_image = image_server.add_file("/big.png", corpus_bytes("cell.png") + b"\x00" * len(data), "image/png")
    answer = _post(client, b"", query=f"?url={big_image}")
    assert answer["status"] == 422 and answer["error"]["code"] == "image_too_large"


def test_other_containers_and_codecs_are_415_with_what_is_accepted(client: FlaskClient) -> None:
    avi = b"RIFF\x00\x10\x00\x00AVI LIST" + b"\x00" * 100
    answer = _post(client, avi)
    assert answer["status"] == 415 and answer["error"]["code"] == "unsupported_media_type"
    assert "H.264" in answer["error"]["message"]
    mpeg4 = videos.clip(lambda t: SAFE, seconds=2, codec="mpeg4", container="mp4")
    answer = _post(client, mpeg4)
    assert answer["status"] == 415 and answer["error"]["code"] == "unsupported_media_type", answer


# A decoder that crashes, hangs or lies: the child is stood in for by a script of its protocol.


def _fake_child(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "child.py"
    script.write_text(
        "import json, os, signal, sys, time\n"
        "out = sys.stdout.buffer\n"
        "def say(m, payload=b''):\n"
        "    out.write(json.dumps(m).encode() + b'\\n' + payload); out.flush()\n"
        'say({"info": {"duration_s": 8.0, "width": 32, "height": 24, "codec": "h264"}})\n' + body
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


FRAME = 'say({"frame": {"time_s": 1.0, "width": 32, "height": 24}}, bytes(32 * 24 * 3))\n'
KILLED = "os.kill(os.getpid(), signal.SIGKILL)\n"


@pytest.mark.parametrize(
    ("body", "status", "code", "frames"),
    [
        (KILLED, 422, "invalid_video", 0),  # killed before any frame: a clean error
        (FRAME + KILLED, 200, None, 1),  # killed mid-decode after a frame: the frames it gave
        ('say({"frame": {"time_s": 1.0, "width": 32, "height": 24}}, bytes(100))\n' + KILLED, 422, "invalid_video", 0),
        ('say({"frame": {"time_s": 1.0, "width": 99999, "height": 24}})\n', 422, "invalid_video", 0),
        ("out.write(b'not json\\n'); out.flush()\n", 422, "invalid_video", 0),
        ("time.sleep(60)\n", 504, "deadline_exceeded", 0),  # a hang: killed at NSFW_VIDEO_TIMEOUT
        (FRAME + "time.sleep(60)\n", 200, None, 1),
    ],
)
def test_a_decoder_that_crashes_hangs_or_lies_costs_one_child_and_the_worker_keeps_serving(
    settings: Settings,
    litert: Classifier,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    body: str,
    status: int,
    code: str | None,
    frames: int,
) -> None:
    monkeypatch.setattr(video, "_CHILD", _fake_child(tmp_path, body))
    client = create_app(replace(settings, video_timeout=1.0), litert).test_client()
    started = time.monotonic()
    answer = _post(client, _marked())
    assert answer["status"] == status, answer
    assert time.monotonic() - started < 5
    if code is not None:
        assert answer["error"]["code"] == code
    else:
        assert len(answer["frames"]["classified"]) == frames
    _no_leftovers()
    # The same worker answers the next request (an image) at once.
    assert client.post("/predict", data=corpus_bytes("grace_hopper.jpg"), content_type="image/jpeg").status_code == 200


def test_the_child_limits_itself_before_it_reads_the_file(tmp_path: Path) -> None:
    """RLIMIT_AS is its memory: too little for H.264's decoder is a clean 422, never a worker's."""
    limits = video.VideoLimits(memory_bytes=64 << 20)
    with pytest.raises(VideoTooComplex), video.open_video(io.BytesIO(_marked()), video.MP4, limits):
        pass
    _no_leftovers()


# The review queue ----------------------------------------------------------------------------------

MODERATOR = "m" * 43


def test_a_queued_video_shows_its_judged_frames_with_their_times_and_is_remembered(
    settings: Settings, litert: Classifier, tmp_path: Path
) -> None:
    reviewing = replace(
        settings,
        review=True,
        data_dir=tmp_path,
        api_keys=parse_api_keys(f"moderator:{MODERATOR}:predict+review"),
        secret_key="s" * 40,
        adult_threshold=0.99,  # strict enough that the clip is neither: a human decides
        safe_threshold=0.99,
        video_early_stop=False,
    )
    upgrade(reviewing.database)
    app = create_app(reviewing, litert)
    try:
        client = app.test_client()
        key = {"Authorization": f"Bearer {MODERATOR}"}
        data = _marked("vp9", "webm")
        answer = client.post("/predict?detail=true", data=data, content_type="video/webm", headers=key).json
        assert answer["verdict"]["label"] == "unknown" and answer["review"]["status"] == "pending"
        item = client.get(f"/reviews/{answer['review']['id']}", headers=key).json
        classified = item["frames"]["classified"]
        assert [frame["time_s"] for frame in classified] == [t / 2 for t in range(16)]
        assert item["frames"]["video"] is True
        chosen = next(frame for frame in classified if frame["index"] == item["frames"]["chosen"])
        assert MARK[0] <= chosen["time_s"] < MARK[1]
        for position in range(len(classified)):
            picture = client.get(f"/reviews/{item['id']}/frames/{position}", headers=key)
            assert picture.status_code == 200 and picture.mimetype == "image/jpeg"
        decided = client.post(f"/reviews/{item['id']}/decision", json={"label": "adult"}, headers=key)
        assert decided.status_code == 200
        again = client.post("/predict?detail=true", data=data, content_type="video/webm", headers=key).json
        assert again["tier"] == "human" and again["verdict"]["label"] == "adult"
    finally:
        app.extensions["nsfw.review"].close()


def test_a_cached_videos_entry_keeps_its_times_and_facts() -> None:
    entry = Entry([0, 1], [{"a": 0.1}, {"a": 0.9}], 1, 2, [0.0, 5.0], {"codec": "vp9", "duration_s": 8.0})
    assert Entry.from_json(entry.to_json()) == entry
    image = Entry([0], [{"a": 0.1}], 0, 1)
    assert Entry.from_json(image.to_json()) == image


# Real gunicorn -------------------------------------------------------------------------------------


def test_on_real_gunicorn_videos_and_hostile_videos_cost_no_worker(
    start_gunicorn: Callable[..., Gunicorn], tmp_path: Path
) -> None:
    server = start_gunicorn({"NSFW_VIDEO_TIMEOUT": "10"})
    workers = server.workers()
    clip = _marked("h264", "mp4")
    status, body, _ = _raw(server, "/predict?detail=true", clip, "video/mp4")
    assert status == 200 and json.loads(body)["verdict"]["label"] == "adult"
    for name in videos.HOSTILE:
        status, body, _ = _raw(server, "/predict", _hostile(name), "video/mp4")
        assert status in (200, 415, 422), (name, status, body)
    assert server.workers() == workers
    status, _, _ = call(server, "GET", "/health", "-")
    assert status == 200


def _raw(server: Gunicorn, path: str, data: bytes, content_type: str) -> tuple[int, bytes, dict]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"{server.base}{path}", data=data, method="POST")
    request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.read(), dict(answer.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def test_a_worker_decodes_one_video_at_a_time_and_a_second_waits_then_503s(
    settings: Settings, litert: Classifier, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each decode is a child process of its own memory: 32 threads would make 32 of them on a 1 GB
    box. NSFW_MAX_VIDEO_DECODES (1) bounds them; the next waits NSFW_COMPUTE_WAIT, then 503."""
    import threading

    monkeypatch.setattr(video, "_CHILD", _fake_child(tmp_path, FRAME + "time.sleep(60)\n"))
    app = create_app(replace(settings, video_timeout=2.0, compute_wait=0.2), litert)
    first: list[dict] = []
    holder = threading.Thread(target=lambda: first.append(_post(app.test_client(), _marked())))
    holder.start()
    deadline = time.monotonic() + 5
    while not list(Path(tempfile.gettempdir()).glob("nsfw-video-*")) and time.monotonic() < deadline:
        time.sleep(0.01)  # the first decode has its copy: it holds the decoder
    second = _post(app.test_client(), _marked())
    holder.join()
    assert second["status"] == 503 and second["error"]["code"] == "overloaded", second
    assert first[0]["status"] == 200
    _no_leftovers()


def test_a_full_temporary_folder_is_a_503_not_a_500(client: FlaskClient, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(*args: object, **kwargs: object) -> tuple[int, str]:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(video.tempfile, "mkstemp", full)
    answer = _post(client, _marked())
    assert answer["status"] == 503 and answer["error"]["code"] == "spool_unavailable"
    assert "room" in answer["error"]["message"]  # not "the model is not loaded yet"


# What the reviews of video found, each a test ---------------------------------------------------------


def test_a_video_with_one_keyframe_is_judged_after_it_too(client: FlaskClient) -> None:
    """Keyframe sampling found the one keyframe at 0 for every sample (an infinite GOP, or a live
    stream's intra refresh): 2 s of a safe picture, then adult, answered safe."""
    data = videos.clip(lambda t: SAFE if t < 2 else ADULT, seconds=8, fps=4, gop=1000)
    answer = _post(client, data)
    assert answer["verdict"]["label"] == "adult", answer["frames"]
    assert answer["frames"]["classified"][-1]["time_s"] >= 2.0


def test_a_container_that_lies_about_its_duration_is_read_as_a_stream(client: FlaskClient) -> None:
    """A WebM saying 1 ms for 8 s had every sample taken from its first frame: safe, for 6 s of adult."""
    frames = videos.vp8_packets([SAFE, SAFE] + [ADULT] * 6)
    answer = _post(client, videos.lying_duration(frames, duration_ms=1.0))
    assert answer["status"] == 200 and answer["verdict"]["label"] == "adult", answer
    assert answer["video"]["duration_s"] is None  # not the lie


def test_a_video_read_as_a_stream_is_read_from_its_start(settings: Settings, litert: Classifier) -> None:
    """The check of its duration read the first seconds' packets, and the stream's keyframes were
    counted from there: frames 0-2 s never judged (hidden by the early stop, seen without it)."""
    client = create_app(replace(settings, video_early_stop=False), litert).test_client()
    frames = videos.vp8_packets([SAFE, SAFE] + [ADULT] * 6)
    answer = _post(client, videos.lying_duration(frames, duration_ms=1.0))
    times = [frame["time_s"] for frame in answer["frames"]["classified"]]
    assert times == [0.0, 1.0, 2.0, 3.0, 5.0]  # the keyframes at Fibonacci positions 0, 1, 2, 3, 5


def test_frames_without_timestamps_are_each_judged(client: FlaskClient) -> None:
    """FFmpeg gives laced frames no timestamp; deduplicated by their (absent) pts, 8 frames were one."""
    frames = videos.vp8_packets([SAFE, SAFE] + [ADULT] * 6)
    answer = _post(client, videos.laced_without_timestamps(frames))
    assert answer["status"] == 200 and answer["verdict"]["label"] == "adult", answer
    assert len(answer["frames"]["classified"]) >= 3


def test_a_thousand_keyframes_at_one_instant_cost_a_few_decodes(client: FlaskClient) -> None:
    """Every frame a duplicate of time 0: the child decoded every one of them looking for a new time
    (a 42 MB file of 4K keyframes held it to NSFW_VIDEO_TIMEOUT, 20 s), and judged one. Read as a
    stream, the keyframes at Fibonacci positions are decoded, the others only demuxed: 16 judged."""
    started = time.monotonic()
    answer = _post(client, _hostile("keyframes_at_one_time.webm"))
    assert answer["status"] == 200 and time.monotonic() - started < 5
    assert len(answer["frames"]["classified"]) == 16


def test_a_decode_cut_short_or_stopped_early_is_never_cached(
    settings: Settings, litert: Classifier, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A decode cut by its deadline (a loaded box) was cached and served as the whole video's answer;
    one stopped at an adult frame too. Only a decode that sampled the whole video is remembered."""
    from nsfw.web import state

    app = create_app(replace(settings, cache_size=16), litert)
    service = state.service(app)
    adult_clip, safe_clip = _marked(), videos.clip(lambda t: SAFE, seconds=4)
    with app.app_context():
        for data in (adult_clip, safe_clip):
            first = service.predict_image(io.BytesIO(data), video_ask())
            again = service.predict_image(io.BytesIO(data), video_ask())
            assert first.cache == "miss" or first.cache is None
            assert again.cache == ("hit" if data is safe_clip else None), (first.cache, again.cache)
    monkeypatch.setattr(video, "_CHILD", _fake_child(tmp_path, FRAME + "time.sleep(60)\n"))  # cut short
    cut = create_app(replace(settings, cache_size=16, video_timeout=1.0), litert)
    cut_service = state.service(cut)
    with cut.app_context():
        cut_service.predict_image(io.BytesIO(safe_clip + b"\0"), video_ask())
        assert cut_service.predict_image(io.BytesIO(safe_clip + b"\0"), video_ask()).cache is None


def video_ask() -> object:
    from nsfw.pipeline.service import Ask

    return Ask()


def test_a_videos_cache_key_is_its_own() -> None:
    """An instance from before videos shares Redis: an entry of six fields under an image's key was
    its 500. A video's key names its sampling, which no image's key does."""
    from nsfw.cache import key

    assert key("t", "s", "m", "v", "nsfwjs:video16") != key("t", "s", "m", "v", "nsfwjs")


def test_a_video_is_never_sent_to_the_second_tier_endpoint(
    settings: Settings, litert: Classifier, image_server: ImageServer
) -> None:
    """The endpoint reads images: a whole video (read into memory for it) was sent."""
    seen: list[str] = []

    def endpoint(request: object) -> None:
        seen.append("asked")
        handler = request
        body = b'{"nsfw": 0.5}'
        handler.send_response(200)  # type: ignore[attr-defined]
        handler.send_header("Content-Length", str(len(body)))  # type: ignore[attr-defined]
        handler.end_headers()  # type: ignore[attr-defined]
        handler.wfile.write(body)  # type: ignore[attr-defined]

    image_server.routes["/tier"] = endpoint
    tiered = replace(settings, second_tier_url=image_server.url("/tier"), adult_threshold=0.99, safe_threshold=0.99)
    client = create_app(tiered, litert).test_client()
    uncertain = Image.open(io.BytesIO(corpus_bytes("cell.png"))).convert("RGB")  # between both thresholds
    answer = _post(client, videos.clip(lambda t: uncertain, seconds=2))
    assert answer["verdict"]["label"] == "unknown" and "error" in answer["second_tier"] and not seen


def test_the_video_cap_is_only_where_a_video_is_taken(settings: Settings) -> None:
    """/metrics, a batch or an unknown path took a 100 MiB video/* or multipart body."""
    from nsfw.web.routes import body_limit

    for path in ("/metrics", "/predict/batch", "/nowhere", "/openapi.json"):
        assert body_limit(settings, path, "video/mp4") <= settings.max_batch_bytes, path
        assert body_limit(settings, path, "multipart/form-data") < settings.max_video_bytes, path
    for path in ("/predict", "/models/mobilenet_v2/predict", "/compat/pictrs/x"):
        assert body_limit(settings, path, "video/mp4") == settings.max_video_bytes, path


def test_waiters_for_a_video_download_their_own_instead_of_a_copy_in_memory() -> None:
    """Three requests for one 90 MB video held it in the worker's memory for the two that waited."""
    from nsfw.pipeline.flow import _Flight

    flight = _Flight()
    flight.followers = 1
    flight.land(io.BytesIO(b"v" * 1000), most=100)
    assert flight.join(1) is None  # too large to share: the follower downloads it itself
    small = _Flight()
    small.followers = 1
    small.land(io.BytesIO(b"i" * 10), most=100)
    assert small.join(1).read() == b"i" * 10


def test_a_copy_a_killed_worker_left_is_swept_at_the_next_start(settings: Settings, litert: Classifier) -> None:
    old = Path(tempfile.gettempdir()) / f"{video.COPY_PREFIX}left.bin"
    old.write_bytes(b"x")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    fresh = Path(tempfile.gettempdir()) / f"{video.COPY_PREFIX}in-use.bin"
    fresh.write_bytes(b"x")
    try:
        create_app(settings, litert)
        assert not old.exists() and fresh.exists()  # another worker's copy in use stays
    finally:
        old.unlink(missing_ok=True)
        fresh.unlink(missing_ok=True)


def test_on_real_gunicorn_a_decoder_killed_mid_decode_costs_its_request_a_clean_answer_only(
    start_gunicorn: Callable[..., Gunicorn],
) -> None:
    """The child is SIGKILLed from outside while it decodes (a long clip with one keyframe: its second
    pass decodes every frame): the request answers 200 on the frames it had, or a clean 4xx, and the
    same workers go on serving."""
    import threading

    server = start_gunicorn({"NSFW_VIDEO_TIMEOUT": "15"})
    workers = server.workers()
    long_clip = videos.clip(lambda t: SAFE, seconds=20, fps=24, size=(854, 480), gop=100_000)
    killed: list[int] = []

    def kill_the_decoder() -> None:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not killed:
            for worker in workers:
                for child in children(worker):  # spawned by an app thread: found by its parent pid
                    try:
                        if "videochild" in Path(f"/proc/{child}/cmdline").read_text(errors="replace"):
                            os.kill(child, signal.SIGKILL)  # as soon as it is seen: mid-decode
                            killed.append(child)
                    except (OSError, ProcessLookupError):  # gone meanwhile
                        continue
            time.sleep(0.01)

    killer = threading.Thread(target=kill_the_decoder)
    killer.start()
    status, body, _ = _raw(server, "/predict?detail=true", long_clip, "video/mp4")
    killer.join()
    assert killed, "the decoder was never seen"
    assert status == 200 or (status == 422 and json.loads(body)["error"]["code"] == "invalid_video"), body
    assert server.workers() == workers
    status, body, _ = _raw(server, "/predict", corpus_bytes("grace_hopper.jpg"), "image/jpeg")
    assert status == 200


def test_a_container_that_says_it_is_far_longer_is_read_as_a_stream(client: FlaskClient) -> None:
    """3,500 s said for 8 s: every sample's seek found the last keyframe (7 s, safe), one frame judged,
    safe, for 7 s of adult before it."""
    frames = videos.vp8_packets([ADULT] * 7 + [SAFE])
    answer = _post(client, videos.lying_duration(frames, duration_ms=3_500_000.0))
    assert answer["status"] == 200 and answer["verdict"]["label"] == "adult", answer
    assert answer["video"]["duration_s"] is None


def test_a_video_cut_short_says_so_and_is_never_answered_safe(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A decode that runs out of time after safe frames answered 200 safe with no sign that samples
    were left unjudged (a hostile file can be made slow on purpose): now `cut_short`, and unknown, for
    a human, where the judged frames alone would say safe."""
    from tests.support import FakeClassifier

    monkeypatch.setattr(video, "_CHILD", _fake_child(tmp_path, FRAME + "time.sleep(60)\n"))
    calm = FakeClassifier(probabilities=(0.0, 0.0, 1.0, 0.0, 0.0))  # neutral: safe
    client = create_app(replace(settings, video_timeout=1.0), calm).test_client()
    answer = _post(client, _marked())
    assert answer["status"] == 200 and answer["video"]["cut_short"] is True
    assert answer["verdict"]["label"] == "unknown" and "cut short" in answer["verdict"]["reason"]
