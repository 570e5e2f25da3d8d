"""`GET /`: what this service is, for an operator's first visit: its version, the models it serves,
the platform adapters that are on with the URL to paste into each platform, and where the API's
description, the review queue and the health probe are. HTML for a browser, JSON for anyone else.

It says nothing a stranger could use that /health and /docs do not already say: no key, no token
(a URL that carries one shows where it goes), no setting but which adapters are on."""

from __future__ import annotations

from html import escape
from typing import Any

from flask import Blueprint, Response, jsonify, request

from nsfw.version import VERSION
from nsfw.web import access, compat, routes, state

bp = Blueprint("landing", __name__)

# The pages carry no script and load nothing: a page that only links.
CSP = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"


def base_url() -> str:
    """This service's URL as the client reached it (a trusted proxy's scheme included)."""
    return f"{access.request_scheme()}://{request.host}"


def describe(base: str) -> dict[str, Any]:
    service = state.service()
    settings = service.settings
    default = service.models.default.spec.name if service.models.ready else settings.model
    links = {"docs": f"{base}/docs", "openapi": f"{base}/openapi.json", "health": f"{base}{routes.HEALTH_PATH}"}
    if settings.review:
        links["review"] = f"{base}{routes.PAGES_PATH}"
    return {
        "service": "nsfw-api",
        "description": "NSFW image classification (GantMan's five classes) with a human review queue.",
        "version": VERSION,
        "models": [{"name": name, "default": name == default} for name in settings.served_models],
        "ready": service.models.ready,
        "keys_required": bool(settings.api_keys),
        "platforms": compat.instructions(base, settings),
        "links": links,
    }


@bp.route(routes.LANDING_PATH, methods=["GET"])
def landing() -> Response:
    about = describe(base_url())
    if request.accept_mimetypes.best_match(["application/json", "text/html"]) == "text/html":
        response = Response(_page(about), content_type="text/html; charset=utf-8")
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
    else:
        response = jsonify(about)
    # The URLs are built from the request's Host: a shared cache must not hand one client's to another.
    response.headers["Cache-Control"] = "no-store"
    response.headers["Vary"] = "Accept"
    return response


def _page(about: dict[str, Any]) -> str:
    """The same facts as HTML; every value escaped (the Host header is the client's)."""
    e = escape
    models = "".join(
        f"<li><code>{e(model['name'])}</code>{' (default)' if model['default'] else ''}</li>"
        for model in about["models"]
    )
    rows = []
    for platform in about["platforms"]:
        state_text = "on" if platform["on"] else "off (NSFW_COMPAT)"
        rows.append(
            f"<tr><th>{e(platform['name'])}</th><td>{e(state_text)}</td>"
            f"<td><code>{e(platform['paste'])}</code></td><td>{e(platform['where'])}</td>"
            f"<td>{e(platform['key'])}</td></tr>"
        )
    keys = (
        "Every route needs an API key but this page, /health, /docs, /openapi.json, Misskey's probe and "
        "the moderator's pages (which sign in)."
        if about["keys_required"]
        else ""
    )
    links = "".join(f'<li><a href="{e(url)}">{e(name)}</a></li>' for name, url in about["links"].items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>nsfw-api {e(about["version"])}</title>
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem}}
table{{border-collapse:collapse}}th,td{{border:1px solid #bbb;padding:.3rem .5rem;text-align:left;vertical-align:top}}
code{{word-break:break-all}}</style></head><body>
<h1>nsfw-api <small>{e(about["version"])}</small></h1>
<p>{e(about["description"])} {keys}</p>
<h2>Models</h2><ul>{models}</ul>
<h2>Platforms</h2>
<table><tr><th>platform</th><th>adapter</th><th>paste this</th><th>where</th><th>key</th></tr>{"".join(rows)}</table>
<h2>Links</h2><ul>{links}</ul>
</body></html>
"""
