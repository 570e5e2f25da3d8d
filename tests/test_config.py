from __future__ import annotations

import ipaddress
from dataclasses import fields

import pytest

from nsfw.config import ConfigError, Settings


def test_defaults_are_safe() -> None:
    s = Settings()
    assert s.backend == "litert" and s.resize == "nsfwjs"
    assert s.allowed_networks == ()
    assert s.allowed_ports == (80, 443)
    assert s.max_redirects == 3 and s.max_url_length == 2048
    assert s.load_in_background is False
    assert s.validate() is s


def test_every_field_has_a_variable_and_parses_from_env() -> None:
    env = {
        "NSFW_BACKEND": "tensorflow",
        "NSFW_RESIZE": "gantman",
        "NSFW_INFERENCE_THREADS": "2",
        "NSFW_CONNECT_TIMEOUT": "1.5",
        "NSFW_MAX_BYTES": "2048",
        "NSFW_ALLOWED_NETWORKS": " 127.0.0.1/32, 10.1.2.3/8 ,fd00::/8",
        "NSFW_ALLOWED_PORTS": "80,8080",
        "NSFW_LOAD_IN_BACKGROUND": "true",
        "NSFW_LOG_LEVEL": "debug",
    }
    s = Settings.from_env(env)
    assert s.backend == "tensorflow" and s.resize == "gantman"
    assert s.inference_threads == 2 and s.connect_timeout == 1.5 and s.max_bytes == 2048
    assert s.allowed_networks == (
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("fd00::/8"),
    )
    assert s.allowed_ports == (80, 8080)
    assert s.load_in_background is True and s.log_level == "DEBUG"


def test_unrelated_variables_are_ignored() -> None:
    assert Settings.from_env({"PORT": "9999", "WEB_CONCURRENCY": "2", "PATH": "/bin"}) == Settings()


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"NSFW_ALLOWED_NETWORK": "10.0.0.0/8"}, "NSFW_ALLOWED_NETWORK"),  # a typo is refused
        ({"NSFW_BACKEND": "onnx"}, "NSFW_BACKEND"),
        ({"NSFW_RESIZE": "lanczos"}, "NSFW_RESIZE"),
        ({"NSFW_MAX_BYTES": "ten"}, "NSFW_MAX_BYTES"),
        ({"NSFW_MAX_BYTES": "10"}, "NSFW_MAX_BYTES"),
        ({"NSFW_CONNECT_TIMEOUT": "0"}, "NSFW_CONNECT_TIMEOUT"),
        ({"NSFW_ALLOWED_NETWORKS": "10.0.0.0/33"}, "NSFW_ALLOWED_NETWORKS"),
        ({"NSFW_ALLOWED_PORTS": "80,70000"}, "NSFW_ALLOWED_PORTS"),
        ({"NSFW_LOAD_IN_BACKGROUND": "maybe"}, "NSFW_LOAD_IN_BACKGROUND"),
        ({"NSFW_MODELS_DIR": "/nonexistent"}, "NSFW_MODELS_DIR"),
        ({"NSFW_LOG_LEVEL": "loud"}, "NSFW_LOG_LEVEL"),
    ],
)
def test_bad_values_fail_at_boot_naming_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        Settings.from_env(env)


def test_every_field_is_documented_in_the_readme() -> None:
    from tests.support import REPO

    readme = (REPO / "README.md").read_text()
    for f in fields(Settings):
        assert f"`NSFW_{f.name.upper()}`" in readme, f.name
