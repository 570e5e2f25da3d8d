"""Fixtures chain settings -> app -> client; the network is a local server on 127.0.0.1."""

from __future__ import annotations

import importlib.util
import ipaddress
import os
from collections.abc import Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient

from nsfw import create_app
from nsfw.config import Settings
from nsfw.model import Classifier, load_classifier
from tests.reference import CORPORA, Corpus, corpus
from tests.served import start_gunicorn  # noqa: F401 - a fixture, for the tests from outside
from tests.servers import PostgresServer, RedisServer
from tests.support import FakeClassifier, ImageServer

LOOPBACK = (ipaddress.ip_network("127.0.0.1/32"),)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # CI installs everything; there a missing TensorFlow is a failure, not a skip.
    if os.environ.get("CI"):
        return
    if importlib.util.find_spec("tensorflow") is None:
        skip = pytest.mark.skip(reason="TensorFlow not installed (pip install -r requirements-tf.txt)")
        for item in items:
            if "tensorflow" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session", params=CORPORA)
def reference(request: pytest.FixtureRequest) -> Corpus:
    """Each parity corpus in turn: the repository's own, then ../shared/reference where it exists."""
    return corpus(request.param)


@pytest.fixture(scope="session")
def repo_reference() -> Corpus:
    """The repository's own corpus alone (for checks that need one image, not every corpus)."""
    return corpus("repo")


@pytest.fixture()
def image_server() -> Iterator[ImageServer]:
    with ImageServer() as server:
        yield server


@pytest.fixture()
def settings(image_server: ImageServer) -> Settings:
    """Defaults, with the explicit opening tests need: the local server's address and port."""
    return Settings(
        allowed_networks=LOOPBACK,
        allowed_ports=(80, 443, image_server.port),
        load_in_background=False,
        download_timeout=3.0,
        read_timeout=1.0,
        connect_timeout=1.0,
    )


@pytest.fixture(scope="session")
def litert() -> Classifier:
    return load_classifier(Settings(load_in_background=False))


@pytest.fixture()
def fake() -> FakeClassifier:
    return FakeClassifier()


@pytest.fixture()
def app(settings: Settings, litert: Classifier) -> Flask:
    return create_app(settings, litert)


@pytest.fixture()
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture()
def fake_client(settings: Settings, fake: FakeClassifier) -> FlaskClient:
    return create_app(settings, fake).test_client()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server on a loopback port, for the whole run; each test flushes what it used."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A real PostgreSQL (Debian's), a fresh cluster on a loopback port, for the whole run."""
    server = PostgresServer()
    yield server
    server.stop()
