"""The client address behind trusted proxies (NSFW_TRUSTED_PROXIES, nsfw.web.access.client_of)."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

import pytest

from nsfw import create_app
from nsfw.config import ConfigError, Settings
from nsfw.web.access import client_of
from tests.support import FakeClassifier

PROXIES = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8"))


@pytest.mark.parametrize(
    ("peer", "forwarded", "client"),
    [
        # An untrusted peer's header is ignored: anyone can send one.
        ("203.0.113.9", ["198.51.100.1"], "203.0.113.9"),
        # A trusted proxy's last hop is the client.
        ("10.1.2.3", ["198.51.100.1"], "198.51.100.1"),
        # Hops left of the first untrusted one are the client's own words: never read.
        ("10.1.2.3", ["6.6.6.6, 198.51.100.1"], "198.51.100.1"),
        ("10.1.2.3", ["6.6.6.6", "198.51.100.1, 10.9.9.9"], "198.51.100.1"),
        # A client that claims to be a trusted proxy is still read from the right.
        ("10.1.2.3", ["10.7.7.7, 198.51.100.1"], "198.51.100.1"),
        # Every hop trusted: the leftmost.
        ("10.1.2.3", ["10.4.4.4, 10.5.5.5"], "10.4.4.4"),
        # No header: the proxy itself.
        ("10.1.2.3", [], "10.1.2.3"),
        # A hop that is not an address stops at the proxy that wrote it.
        ("10.1.2.3", ["198.51.100.1, garbage"], "10.1.2.3"),
        ("10.1.2.3", ["198.51.100.1, <script>, 10.2.2.2"], "10.2.2.2"),
        # Ports and brackets, as some proxies write them; IPv4 on a dual-stack socket.
        ("10.1.2.3", ["198.51.100.1:4711"], "198.51.100.1"),
        ("fd00::1", ["[2001:db8::5]:443"], "2001:db8::5"),
        ("::ffff:10.1.2.3", ["198.51.100.1"], "198.51.100.1"),
    ],
)
def test_forwarded_hops_are_read_from_the_right(peer: str, forwarded: list[str], client: str) -> None:
    assert client_of(peer, forwarded, PROXIES) == client


def test_no_trusted_proxy_means_the_socket() -> None:
    assert client_of("10.1.2.3", ["198.51.100.1"], ()) == "10.1.2.3"


@pytest.mark.parametrize("raw", ["10.0.0.0/33", "ten", "10.1.2.3/8", "10.0.0.0/8,,nope"])
def test_malformed_proxies_stop_the_boot(raw: str) -> None:
    with pytest.raises(ConfigError, match="NSFW_TRUSTED_PROXIES"):
        Settings.from_env({"NSFW_TRUSTED_PROXIES": raw})


def test_a_malformed_header_name_stops_the_boot() -> None:
    with pytest.raises(ConfigError, match="NSFW_CLIENT_ADDRESS_HEADER"):
        Settings.from_env({"NSFW_CLIENT_ADDRESS_HEADER": "X Forwarded: For"})


def _statuses(settings: Settings, peer: str, forwarded: list[str], header: str = "X-Forwarded-For") -> list[int]:
    client = create_app(settings, FakeClassifier()).test_client()
    return [
        client.get("/models", headers={header: value}, environ_base={"REMOTE_ADDR": peer}).status_code
        for value in forwarded
    ]


def test_rate_limits_count_the_forwarded_client_behind_a_trusted_proxy(settings: Settings) -> None:
    limited = replace(settings, rate_limit="1/minute", trusted_proxies=PROXIES)
    # Two clients behind one proxy: one request each.
    assert _statuses(limited, "10.0.0.5", ["198.51.100.1", "198.51.100.2", "198.51.100.1"]) == [200, 200, 429]


def test_an_untrusted_peer_cannot_dodge_its_limit_with_a_header(settings: Settings) -> None:
    limited = replace(settings, rate_limit="1/minute", trusted_proxies=PROXIES)
    assert _statuses(limited, "203.0.113.9", ["198.51.100.1", "198.51.100.2"]) == [200, 429]
    unconfigured = replace(settings, rate_limit="1/minute")
    assert _statuses(unconfigured, "10.0.0.5", ["198.51.100.1", "198.51.100.2"]) == [200, 429]


def test_a_single_address_header_such_as_digitaloceans(settings: Settings) -> None:
    limited = replace(
        settings,
        rate_limit="1/minute",
        trusted_proxies=(ipaddress.ip_network("0.0.0.0/0"),),
        client_address_header="DO-Connecting-IP",
    )
    assert _statuses(limited, "10.0.0.5", ["198.51.100.1", "198.51.100.2", "198.51.100.2"], "DO-Connecting-IP") == [
        200,
        200,
        429,
    ]


EVERYONE = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))


@pytest.mark.parametrize(
    ("forwarded", "client"),
    [
        (["198.51.100.1"], "198.51.100.1"),
        # The client sent one, the edge appended its own: the last is the edge's.
        (["6.6.6.6, 198.51.100.1"], "198.51.100.1"),
        (["6.6.6.6", "198.51.100.1"], "198.51.100.1"),
        # None, or not an address: the peer.
        ([], "10.0.0.5"),
        (["6.6.6.6, garbage"], "10.0.0.5"),
    ],
)
def test_a_single_address_header_is_the_last_value_its_proxy_set(forwarded: list[str], client: str) -> None:
    """Finding 8 of issue 22 (fails before it: every hop of DO-Connecting-IP was walked as a list with
    every peer trusted, so the leftmost value, the client's own, was taken as its address)."""
    assert client_of("10.0.0.5", forwarded, EVERYONE, single=True) == client


def test_a_client_cannot_choose_its_address_behind_digitaloceans_edge(settings: Settings) -> None:
    """Finding 8 of issue 22 (fails before it: with the DO spec's settings a client rotating a
    DO-Connecting-IP of its own got a fresh rate limit with each request)."""
    limited = replace(
        settings, rate_limit="1/minute", trusted_proxies=EVERYONE, client_address_header="DO-Connecting-IP"
    )
    forged = ["1.1.1.1, 198.51.100.7", "2.2.2.2, 198.51.100.7", "3.3.3.3, 198.51.100.8"]
    assert _statuses(limited, "10.0.0.5", forged, "DO-Connecting-IP") == [200, 429, 200]


def test_trusting_everyone_with_a_list_header_stops_the_boot() -> None:
    """Finding 8 of issue 22: X-Forwarded-For with every peer trusted is always the client's choice."""
    with pytest.raises(ConfigError, match="NSFW_TRUSTED_PROXIES"):
        Settings.from_env({"NSFW_TRUSTED_PROXIES": "0.0.0.0/0"})
    with pytest.raises(ConfigError, match="NSFW_TRUSTED_PROXIES"):
        Settings.from_env({"NSFW_TRUSTED_PROXIES": "10.0.0.0/8,::/0", "NSFW_CLIENT_ADDRESS_HEADER": "x-forwarded-for"})
    ok = Settings.from_env({"NSFW_TRUSTED_PROXIES": "0.0.0.0/0,::/0", "NSFW_CLIENT_ADDRESS_HEADER": "DO-Connecting-IP"})
    assert not ok.forwards_a_list
