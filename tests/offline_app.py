"""The service as gunicorn serves it (`gunicorn tests.offline_app:app`), with no way off this machine:
every name is unknown (400 url_not_allowed) and a connection to anything but loopback is refused
(502 upstream_error). For tests that let a generator (schemathesis) write the URLs: whatever it
writes, nothing reaches the internet. Imports only the serving set (it runs from .venv-serve)."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

from nsfw import create_app

_connect = socket.socket.connect


def _no_names(host: str, port: int) -> list[str]:
    raise socket.gaierror(socket.EAI_NONAME, f"{host}: no names in this test")


def _loopback_only(self: socket.socket, address: Any) -> None:
    if self.family in (socket.AF_INET, socket.AF_INET6) and not ipaddress.ip_address(address[0]).is_loopback:
        raise ConnectionRefusedError(f"{address[0]}: only loopback in this test")
    _connect(self, address)


socket.socket.connect = _loopback_only  # type: ignore[method-assign]
app = create_app(resolver=_no_names)
