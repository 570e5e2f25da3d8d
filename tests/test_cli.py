"""`python -m nsfw`: files, folders and URLs, one JSON line each, the HTTP API's scores and errors."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from nsfw.cli import main
from tests.reference import Corpus
from tests.support import CORPUS, MESSAGES, REPO, ImageServer, corpus_bytes


@pytest.fixture()
def env(image_server: ImageServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NSFW_ALLOWED_NETWORKS", "127.0.0.1/32")
    monkeypatch.setenv("NSFW_ALLOWED_PORTS", f"80,443,{image_server.port}")


def _run(args: list[str]) -> tuple[int, list[dict]]:
    out = io.StringIO()
    status = main(args, out=out)
    return status, [json.loads(line) for line in out.getvalue().splitlines()]


def test_files_folders_and_urls_give_the_http_apis_answers(
    env: None, tmp_path: Path, image_server: ImageServer, client: FlaskClient
) -> None:
    folder = tmp_path / "photos"
    (folder / "nested").mkdir(parents=True)
    shutil.copy(CORPUS / "coffee.png", folder / "b.png")
    shutil.copy(CORPUS / "grace_hopper.jpg", folder / "nested" / "a.jpg")
    (folder / "notes.txt").write_text("not an image, and not picked from a folder")
    (folder / ".hidden.jpg").write_bytes(b"skipped")
    url = image_server.add_file("/l.jpg", corpus_bytes("rocket.jpg"))
    tiff = str(CORPUS / "v_chelsea_cmyk.tif")
    status, lines = _run([str(folder), url, str(tmp_path / "missing.jpg"), tiff])
    assert status == 1  # some failed
    assert [line["input"] for line in lines] == [
        str(folder / "b.png"),
        str(folder / "nested" / "a.jpg"),
        url,
        str(tmp_path / "missing.jpg"),
        tiff,
    ]
    for line, name in zip(lines[:3], ["coffee.png", "grace_hopper.jpg", "rocket.jpg"], strict=True):
        http = client.post("/predict", data=corpus_bytes(name), content_type="image/png").get_json()
        assert {k: v for k, v in line.items() if k != "input"} == http
    assert lines[3]["error"] == {"code": "unreadable_file", "message": MESSAGES["unreadable_file"]}
    assert lines[4]["error"]["code"] == "unsupported_image_format"


def test_all_good_is_exit_0_and_refusals_are_the_apis(env: None, capsys: pytest.CaptureFixture[str]) -> None:
    status, lines = _run([str(CORPUS / "rocket.jpg"), "--progress", "never"])
    assert status == 0 and "neutral" in lines[0]
    status, lines = _run(["http://169.254.169.254/latest/meta-data/", "file:///etc/passwd"])
    assert status == 1
    assert [line["error"]["code"] for line in lines] == ["url_not_allowed", "url_scheme_not_allowed"]


def test_the_progress_bar_shows_on_request_and_stays_off_when_not_a_terminal(
    env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    photos = [str(CORPUS / "rocket.jpg")] * 3
    _run(photos)
    assert "image" not in capsys.readouterr().err  # stderr is not a terminal here
    _run([*photos, "--progress", "always"])
    assert "3/3" in capsys.readouterr().err


def test_the_module_runs_with_the_serving_dependencies_only(repo_reference: Corpus) -> None:
    python = os.environ.get("TEST_SERVING_PYTHON", sys.executable)
    result = subprocess.run(
        [python, "-m", "nsfw", str(CORPUS / "rocket.jpg")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": os.environ["PATH"]},
    )
    assert result.returncode == 0, result.stderr
    scores = json.loads(result.stdout)
    expected = repo_reference.images()["rocket.jpg"]["variants"]["main"]["probs_array"]
    classes = ("drawings", "hentai", "neutral", "porn", "sexy")
    assert max(abs(scores[c] - p) for c, p in zip(classes, expected, strict=True)) <= 1e-3


def test_a_model_of_the_catalogue_can_be_chosen(env: None) -> None:
    path = str(CORPUS / "rocket.jpg")
    status, lines = _run(["--model", "open_nsfw", path])
    assert status == 0 and set(lines[0]) == {"input", "sfw", "nsfw"} and lines[0]["nsfw"] < 0.5
    with pytest.raises(SystemExit):
        _run(["--model", "resnet", path])
