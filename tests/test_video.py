"""Videos (nsfw/imaging/video.py, videochild.py; issue 25): made here with PyAV's encoders
(scripts/hostile_videos.py), a known frame at a known time that the model scores differently from the
rest (microaneurysms.png, porn 0.86, among grace_hopper.jpg's neutral 0.998)."""

from __future__ import annotations

import io
import json
import os
import stat
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from PIL import Image

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
    assert times == [float(t) for t in range(8)]  # a keyframe a second: 16 samples find 8
    flat = _post(client, data, query="")
    chosen = answer["frames"]["classified"][answer["frames"]["chosen"]]
    assert flat == {"status": 200, **chosen["scores"]} and chosen["time_s"] == 5.0


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
    # The samples fall between its two keyframes: each seek finds the first (one decode, not 10 h).
    assert [frame["time_s"] for frame in answer["frames"]["classified"]] == [0.0]
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
        assert [frame["time_s"] for frame in classified] == [float(t) for t in range(8)]
        assert item["frames"]["chosen"] == 5
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
    assert answer["status"] == 503 and answer["error"]["code"] == "unavailable"
