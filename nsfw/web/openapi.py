"""The API's description: one OpenAPI 3.1 document for every route, served at /openapi.json and
rendered by Swagger UI at /docs (flask-swagger-ui's pinned files: Swagger UI 5 renders 3.1; the
swagger-ui-bundle package stopped at 4.15, which cannot).

/docs shares its origin with the moderator's pages, so it runs no inline script: a page of our own
loads Swagger UI's files and its initializer (/docs/swagger-initializer.js, as Swagger UI's own
dist lays it out) from 'self', under a Content-Security-Policy that allows nothing else (DOCS_CSP).

Kept in one place, this module, and held to the app: tests/test_openapi.py fails when a route of the
app's table is missing here or a path here is not served, validates the document with
openapi-spec-validator, and runs schemathesis against a live gunicorn (statuses, content types and
bodies as written here). The error codes come from the error tree (nsfw/errors.py), by status.
"""

from __future__ import annotations

import json
from collections import defaultdict
from functools import cache
from pathlib import Path
from typing import Any

import flask_swagger_ui
from flask import Flask, Response, jsonify, request, send_from_directory
from werkzeug.exceptions import NotFound

from nsfw import errors
from nsfw.config import RESIZE_MODES, SCOPES
from nsfw.model.specs import MODELS
from nsfw.pipeline.verdict import OVERRIDABLE
from nsfw.version import VERSION
from nsfw.web.routes import SESSION_COOKIE

OPENAPI_PATH = "/openapi.json"
DOCS_PATH = "/docs"

Schema = dict[str, Any]


def _error_schema(codes: list[str]) -> Schema:
    """`{"error": {"code", "message"}}` with code one of codes."""
    return {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {"code": {"enum": codes}, "message": {"type": "string"}},
            }
        },
    }


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


_PROBABILITY: Schema = {"type": "number", "minimum": 0, "maximum": 1}
_REF: Schema = {
    "type": "string",
    "minLength": 1,
    "maxLength": 200,
    "description": "The review queue's client reference.",
}

SCHEMAS: dict[str, Schema] = {
    "Scores": {
        "description": "The model's classes and their probabilities, which sum to 1: GantMan's "
        "drawings, hentai, neutral, porn, sexy (NSFW-FLASK's flat shape); open_nsfw's sfw, nsfw; "
        "private_detector's lewd, not_lewd.",
        "type": "object",
        "minProperties": 2,
        "additionalProperties": _PROBABILITY,
        "examples": [{"drawings": 0.0014, "hentai": 0.0001, "neutral": 0.9983, "porn": 0.0001, "sexy": 0.0001}],
    },
    "Verdict": {
        "type": "object",
        "required": ["label", "reason"],
        "properties": {
            "label": {"enum": ["adult", "unknown", "safe"]},
            "reason": {"type": "string", "description": "The rule that decided, with the numbers it compared."},
        },
    },
    "Detailed": {
        "description": "?detail=true: the scores, the verdict and everything behind it.",
        "type": "object",
        "required": ["scores", "verdict", "model", "tier", "policy", "timing_ms"],
        "properties": {
            "scores": _ref("Scores"),
            "verdict": _ref("Verdict"),
            "model": {
                "type": "object",
                "required": ["name", "version", "backend"],
                "properties": {name: {"type": "string"} for name in ("name", "version", "backend")},
            },
            "tier": {
                "enum": [1, 2, "adapter", "human", "bank"],
                "description": "2: the second tier decided; adapter: the adapter learned from this service's "
                "review decisions (see adapter); human: a review decision (of these bytes, or of a "
                "near-duplicate: see match); bank: an adult hash bank's signal.",
            },
            "adapter": {
                "type": "object",
                "description": "When an adapter is promoted for this model: its version and its probability that "
                "the image is adult (it decides at the policy's thresholds what the model left unknown, and with "
                "NSFW_ADAPTER_OVERRIDE may overturn the model's own verdict; never a human's).",
                "required": ["version", "probability"],
                "properties": {"version": {"type": "integer", "minimum": 1}, "probability": _PROBABILITY},
            },
            "match": {
                "type": "object",
                "description": "What a near-duplicate (PDQ) match decided: a human decision (review, only to a "
                "key that sent that image) or a bank, and the Hamming distance.",
                "required": ["distance"],
                "properties": {
                    "distance": {"type": "integer", "minimum": 0, "maximum": 256},
                    "review": {"type": "string"},
                    "bank": {"type": "string"},
                },
            },
            "review": {
                "type": "object",
                "description": "With NSFW_REVIEW on: the image's review item ({id, status}, kind audit for a "
                "sample; a remembered decision's id only to a key that sent the image), and {error: {code, "
                "message}} when the image was not queued or its ref not kept: the prediction stands. Codes: "
                + ", ".join(f"`{cls.code}`" for cls in errors.review_problems())
                + ", or the error that kept its pictures from being made (`overloaded`, `deadline_exceeded`).",
                "properties": {
                    "id": {"type": "string"},
                    "status": {"enum": ["pending", "decided"]},
                    "kind": {"enum": ["audit"]},
                    "error": {
                        "type": "object",
                        "required": ["code", "message"],
                        "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                    },
                },
            },
            "policy": {
                "type": "object",
                "required": list(OVERRIDABLE),
                "properties": {name: _PROBABILITY for name in OVERRIDABLE},
            },
            "timing_ms": {
                "type": "object",
                "required": ["classify", "total"],
                "properties": {"classify": {"type": "number"}, "total": {"type": "number"}},
            },
            "second_tier": {
                "type": "object",
                "description": "The second tier's answer ({nsfw: p}, with model for a model tier), or its error.",
            },
            "frames": {
                "type": "object",
                "description": "Animations and videos: the frames classified and the one that answered "
                "(a video's frames with their time, in seconds from its start).",
                "required": ["count", "chosen", "classified"],
                "properties": {
                    "count": {"type": "integer", "minimum": 1},
                    "chosen": {"type": "integer", "minimum": 0},
                    "classified": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["index", "scores"],
                            "properties": {
                                "index": {"type": "integer"},
                                "time_s": {"type": ["number", "null"]},
                                "scores": _ref("Scores"),
                            },
                        },
                    },
                },
            },
            "video": {
                "type": "object",
                "description": "A video's container facts (its duration is null for a live stream's).",
                "required": ["duration_s", "width", "height", "codec"],
                "properties": {
                    "duration_s": {"type": ["number", "null"]},
                    "width": {"type": "integer"},
                    "height": {"type": "integer"},
                    "codec": {"enum": ["h264", "hevc", "av1", "vp8", "vp9"]},
                },
            },
        },
    },
    "Prediction": {"anyOf": [_ref("Scores"), _ref("Detailed")]},
    "Batch": {
        "type": "object",
        "required": ["results"],
        "properties": {
            "results": {
                "type": "array",
                "description": "One per item, in order: its answer, or its own error.",
                "items": {"anyOf": [_ref("Scores"), _ref("Detailed"), _ref("Error")]},
            }
        },
    },
    "ModelPrediction": {
        "description": "NSFW-FLASK's v2 shape: each model's NSFW probability (two-class models) or "
        "scores, by name (mobilenet_v2 as nsfw_model for /models/all/predict), and the seconds taken.",
        "type": "object",
        "required": ["time"],
        "properties": {"time": {"type": "number"}},
        "additionalProperties": {"anyOf": [_PROBABILITY, _ref("Scores")]},
    },
    "Models": {
        "type": "object",
        "required": ["models"],
        "properties": {
            "models": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name", "version", "served", "default", "backend", "classes", "sha256"],
                    "properties": {
                        "name": {"enum": list(MODELS)},
                        "version": {"type": "string"},
                        "served": {"type": "boolean"},
                        "default": {"type": "boolean"},
                        "backend": {"type": "string"},
                        "input_size": {"type": "integer"},
                        "classes": {"type": "array", "items": {"type": "string"}},
                        "adult_classes": {"type": "array", "items": {"type": "string"}},
                        "source": {"type": "string"},
                        "licence": {"type": "string"},
                        "sha256": {"type": ["string", "null"]},
                    },
                },
            }
        },
    },
    "Health": {
        "type": "object",
        "required": ["status"],
        "properties": {
            "status": {"enum": ["ok", "loading"]},
            "model": {"type": "string"},
            "version": {"type": "string"},
            "backend": {"type": "string"},
            "models": {"type": "array", "items": {"type": "string"}},
        },
    },
    "Error": _error_schema(sorted({cls.code for cls in errors.every_error()})),
    "UrlBody": {
        "type": "object",
        "required": ["url"],
        "properties": {"url": {"type": "string", "description": "An http(s) URL of the image."}, "ref": _REF},
    },
    "Base64Body": {
        "type": "object",
        "required": ["image_base64"],
        "properties": {
            "image_base64": {
                "type": "string",
                "description": "The image in base64 (plain or URL-safe, line breaks allowed, or a data: URI).",
            },
            "ref": _REF,
        },
    },
    "ReviewItem": {
        "type": "object",
        "required": ["id", "status", "kind", "refs", "sha256", "scores", "model", "reason", "created", "frames"],
        "properties": {
            "id": {"type": "string"},
            "status": {"enum": ["pending", "decided", "expired"]},
            "kind": {"enum": ["unknown", "audit", "appeal"]},
            "refs": {
                "type": "array",
                "description": "The clients' references, each with the key that sent it.",
                "items": {
                    "type": "object",
                    "required": ["ref", "key"],
                    "properties": {"ref": {"type": "string"}, "key": {"type": "string"}},
                },
            },
            "frames": {
                "type": "object",
                "description": "What the model judged: the frame count, and for an animation each classified "
                "frame (its picture: /reviews/{id}/frames/{position}) and the one that decided (the thumbnail).",
                "required": ["count", "chosen", "classified"],
                "properties": {
                    "count": {"type": "integer"},
                    "chosen": {"type": "integer"},
                    "classified": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["position", "index", "scores", "adult"],
                            "properties": {
                                "position": {"type": "integer"},
                                "index": {"type": "integer"},
                                "scores": _ref("Scores"),
                                "adult": {"type": "number"},
                            },
                        },
                    },
                },
            },
            "sha256": {"type": "string"},
            "key": {"type": "string"},
            "source_url": {"type": ["string", "null"]},
            "model": {"type": "string"},
            "model_version": {"type": "string"},
            "scores": _ref("Scores"),
            "verdict": {"type": "string"},
            "reason": {"type": "string"},
            "created": {"type": "string"},
            "claimed_by": {"type": ["string", "null"]},
            "claimed_until": {"type": ["string", "null"]},
            "decided": {"type": ["string", "null"]},
            "label": {"enum": ["adult", "safe", None]},
            "decided_by": {"type": ["string", "null"]},
            "note": {"type": ["string", "null"]},
            "reason_code": {"type": ["string", "null"], "description": "One of NSFW_REVIEW_REASONS."},
            "summary": {"type": "string", "description": "Why it waits, written for people."},
            "has_thumbnail": {"type": "boolean"},
            "width": {"type": ["integer", "null"], "description": "The deciding frame's own size in pixels."},
            "height": {"type": ["integer", "null"]},
            "adult": {"type": ["number", "null"], "description": "The sum of the model's adult classes."},
            "escalated": {"type": ["string", "null"]},
            "escalated_by": {"type": ["string", "null"]},
            "appeal": {
                "type": ["object", "null"],
                "description": "The decision the client app's user contests: when, the ref, the statement, "
                "its label and who decided it.",
            },
            "audit": {"type": "array", "items": {"type": "object"}},
        },
    },
}


def _codes_by_status() -> dict[int, list[str]]:
    by_status: dict[int, set[str]] = defaultdict(set)
    for cls in errors.every_error():
        by_status[cls.status].add(cls.code)
    return {status: sorted(codes) for status, codes in sorted(by_status.items())}


def _error_response(status: int, codes: list[str]) -> Schema:
    return {
        "description": "Error: " + ", ".join(f"`{code}`" for code in codes),
        "headers": _HEADERS,
        "content": {"application/json": {"schema": _error_schema(codes)}},
    }


_HEADERS: Schema = {
    "X-Request-Id": {
        "description": "The client's id (1-128 visible ASCII characters) or a fresh one.",
        "schema": {"type": "string", "minLength": 1, "maxLength": 128},
    }
}

# What any request may meet before its route runs: the front door (a malformed request 400, a long
# line 414, large headers 431, a transfer coding 501, a slow body 408, a large one 413, a full worker
# 503), the keys (401, 403), the limits (429), and a failure of ours (500).
_FRONT = (400, 401, 403, 408, 413, 414, 429, 431, 500, 501, 503)
# Of a prediction: a video of another container or codec (415), the image (422), its host (502, 504),
# the deadline (504).
_PREDICTION = (*_FRONT, 415, 422, 502, 504)


def _responses(ok: Schema, statuses: tuple[int, ...]) -> Schema:
    return {"200": ok, **_errors(*sorted(statuses))}


def _errors(*statuses: int) -> Schema:
    return {str(status): {"$ref": f"#/components/responses/Error{status}"} for status in statuses}


def error_responses() -> dict[str, Schema]:
    """Every error status with its codes, from the error tree: the document's table of errors (404
    and 405 are answered for paths and methods it does not list)."""
    return {f"Error{status}": _error_response(status, codes) for status, codes in _codes_by_status().items()}


def _json(schema: Schema, description: str) -> Schema:
    return {"description": description, "headers": _HEADERS, "content": {"application/json": {"schema": schema}}}


def _query(name: str, schema: Schema, description: str) -> Schema:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


_OPTIONS = [
    _query("model", {"enum": list(MODELS)}, "A served model (GET /models); default NSFW_MODEL."),
    _query("resize", {"enum": list(RESIZE_MODES)}, "GantMan's models: the resize (default NSFW_RESIZE)."),
    _query("detail", {"enum": ["true", "false", "1", "0"]}, "true: the verdict and everything behind it."),
    *(_query(name, _PROBABILITY, f"Override NSFW_{name.upper()} for this request.") for name in OVERRIDABLE),
]
_URL = _query("url", {"type": "string", "maxLength": 2048}, "An http(s) URL of the image.")
_OPTIONS.append(_query("ref", _REF, "With detail=true and the review queue on: a reference for the item."))

_IMAGE_BODY: Schema = {
    "required": False,
    "description": "The image, when not given as ?url=: JSON with url or image_base64, a form, an "
    "upload named image, or the raw image.",
    "content": {
        "application/json": {"schema": {"anyOf": [_ref("UrlBody"), _ref("Base64Body")]}},
        "application/x-www-form-urlencoded": {"schema": _ref("UrlBody")},
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["image"],
                "properties": {"image": {"type": "string", "contentMediaType": "application/octet-stream"}},
            }
        },
        "image/*": {"schema": {"type": "string", "contentMediaType": "application/octet-stream"}},
        "video/*": {"schema": {"type": "string", "contentMediaType": "application/octet-stream"}},
    },
}

_BATCH_BODY: Schema = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["items"],
                "properties": {
                    "items": {
                        "type": "array",
                        "maxItems": 32,
                        "description": "At most NSFW_MAX_BATCH items, each a url or an image_base64.",
                        "items": {"anyOf": [_ref("UrlBody"), _ref("Base64Body")]},
                    }
                },
            }
        }
    },
}

_KEYED = [{"bearer": []}, {"apiKey": []}, {}]  # {}: with no NSFW_API_KEYS the service is open


def _operation(summary: str, responses: Schema, **more: Any) -> Schema:
    return {"summary": summary, "security": _KEYED, "responses": responses, **more}


def _predict(method: str) -> Schema:
    operation = _operation(
        "Classify one image: the flat scores, or with detail=true the verdict.",
        _responses(_json(_ref("Prediction"), "The scores (or the detailed answer)."), _PREDICTION),
        operationId=f"predict_{method}",
        parameters=[_URL, *_OPTIONS],
    )
    if method == "post":
        operation["requestBody"] = _IMAGE_BODY
    return operation


def _open(summary: str, responses: Schema, **more: Any) -> Schema:
    return {"summary": summary, "security": [{}], "responses": responses, **more}


@cache
def document() -> Schema:
    """The OpenAPI document (built once; a dict, served as JSON)."""
    text_ok = {"description": "Prometheus' text format.", "headers": _HEADERS, "content": {"text/plain": {}}}
    html_ok = {"description": "Swagger UI.", "content": {"text/html": {}}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "nsfw-api",
            "version": VERSION,
            "description": "GantMan's NSFW model with nsfwjs-identical scores. With NSFW_API_KEYS set, "
            f"every route but /health, {OPENAPI_PATH} and {DOCS_PATH} needs a key (scopes: "
            f"{', '.join(SCOPES)}).",
        },
        "paths": {
            "/predict": {"get": _predict("get"), "post": _predict("post")},
            "/predict/batch": {
                "post": _operation(
                    "Classify up to NSFW_MAX_BATCH images; each item answers for itself.",
                    _responses(_json(_ref("Batch"), "One result per item."), _PREDICTION),
                    operationId="predict_batch",
                    parameters=_OPTIONS,
                    requestBody=_BATCH_BODY,
                )
            },
            "/models": {
                "get": _operation(
                    "The catalogue: every model, whether it is served, its provenance and checksum.",
                    _responses(_json(_ref("Models"), "The catalogue."), _FRONT),
                    operationId="models",
                )
            },
            "/models/{name}/predict": {
                "post": _operation(
                    "NSFW-FLASK's v2 route: one served model, or all of them on one image.",
                    _responses(_json(_ref("ModelPrediction"), "The model's answer and the time."), _PREDICTION),
                    operationId="predict_with_model",
                    parameters=[
                        {"name": "name", "in": "path", "required": True, "schema": {"enum": [*MODELS, "all"]}},
                        _URL,
                    ],
                    requestBody=_IMAGE_BODY,
                )
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics of every worker of this instance.",
                    "security": [{"metricsToken": []}, *_KEYED],
                    "operationId": "metrics",
                    "responses": _responses(text_ok, _FRONT),
                }
            },
            "/health": {
                "get": _open(
                    "Ready once the models are loaded and warmed; no network, no inference.",
                    {
                        "200": _json(_ref("Health"), "Ready."),
                        "503": _json(_ref("Health"), "Still loading."),
                        **_errors(400, 414, 431),
                    },
                    operationId="health",
                )
            },
            "/": {
                "get": _open(
                    "What this service is: version, models, the platform adapters and the URL to paste into "
                    "each, and links. HTML for a browser (Accept: text/html), else JSON.",
                    {
                        "200": {
                            "description": "The service's description.",
                            "headers": _HEADERS,
                            "content": {"application/json": {"schema": _ref("Landing")}, "text/html": {}},
                        },
                        **_errors(400, 414, 429, 431, 500, 503),
                    },
                    operationId="landing",
                )
            },
            **_compat_paths(),
            **_review_paths(),
            **_bank_paths(),
            **_page_paths(),
            OPENAPI_PATH: {
                "get": _open(
                    "This document.",
                    _responses(_json({"type": "object"}, "OpenAPI 3.1."), (400, 414, 429, 431, 500, 503)),
                    operationId="openapi",
                )
            },
            f"{DOCS_PATH}/": {
                "get": _open(
                    f"Swagger UI for this document ({DOCS_PATH} redirects here).",
                    {"200": html_ok},
                    operationId="docs",
                )
            },
            f"{DOCS_PATH}/{{path}}": {
                "get": _open(
                    "Swagger UI's own files.",
                    {
                        "200": {"description": "A file of Swagger UI.", "content": {"*/*": {}}},
                        **_errors(404, 429, 500, 503),
                    },
                    operationId="docs_asset",
                    parameters=[{"name": "path", "in": "path", "required": True, "schema": {"type": "string"}}],
                )
            },
        },
        "components": {
            "schemas": {**SCHEMAS, **_COMPAT_SCHEMAS},
            "responses": error_responses(),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "An NSFW_API_KEYS token."},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "metricsToken": {"type": "http", "scheme": "bearer", "description": "NSFW_METRICS_TOKEN."},
                "session": {"type": "apiKey", "in": "cookie", "name": SESSION_COOKIE},
            },
        },
    }


def _platform_errors(failure: Schema, statuses: tuple[int, ...]) -> Schema:
    """A platform adapter's errors: in its own shape (failure), or, for what gunicorn refuses before
    any route (400, 414, 431, 501), the service's."""
    either = {"anyOf": [failure, _ref("Error")]}
    return {str(status): _json(either, "A failure, in the platform's shape.") for status in sorted(statuses)}


def _compat_paths() -> Schema:
    """The platform adapters (nsfw/web/compat/; each on with NSFW_COMPAT): each platform's own protocol."""
    token = [{"name": "token", "in": "path", "required": True, "schema": {"type": "string"}}]
    raw_image = {
        "required": True,
        "description": "The stored file's bytes, as pict-rs sends them (Content-Type: its media type).",
        "content": {"*/*": {"schema": {"type": "string", "contentMediaType": "application/octet-stream"}}},
    }
    pictrs_ok = _json(_ref("PictrsAnswer"), "Accepted: safe, unknown, or not judged with ON_ERROR=accept.")
    pictrs_responses = {
        "200": pictrs_ok,
        "406": _json(_ref("PictrsAnswer"), "Rejected: adult (or unknown with NSFW_COMPAT_PICTRS_UNKNOWN=reject)."),
        **_platform_errors(_ref("PictrsAnswer"), (400, 401, 403, 408, 413, 414, 422, 429, 431, 500, 501, 503)),
    }

    def pictrs(operation_id: str, **more: Any) -> Schema:
        return _operation(
            "pict-rs external_validation: 2xx accepts the upload, anything else rejects it.",
            pictrs_responses,
            operationId=operation_id,
            requestBody=raw_image,
            **more,
        )

    url = _query("url", {"type": "string"}, "The image's URL, not percent-encoded (read from the raw query).")
    nsfw_api_responses = {
        "200": _json({"anyOf": [_ref("NsfwApiScore"), _ref("NsfwApiError")]}, "The score, or nsfw_api's failure."),
        "400": {
            "description": "No url (nsfw_api's text), or a request gunicorn could not read.",
            "headers": _HEADERS,
            "content": {"text/plain": {}, "application/json": {"schema": _ref("Error")}},
        },
        **_platform_errors(_ref("NsfwApiError"), (401, 403, 408, 413, 414, 429, 431, 500, 501, 503)),
    }

    def nsfw_api(operation_id: str, **more: Any) -> Schema:
        return _operation(
            "Pleroma's NsfwApiPolicy (EugenCepoi/nsfw_api's protocol): P(nsfw) of the image at ?url=.",
            nsfw_api_responses,
            operationId=operation_id,
            parameters=[url, *more.pop("parameters", [])],
            **more,
        )

    misskey_failure = _ref("MisskeyFailure")
    return {
        "/compat/misskey/health": {
            "get": _open(
                "sensitive-detector's probe.",
                {
                    "200": _json(_ref("MisskeyHealth"), "Ready."),
                    "503": _json({"anyOf": [_ref("MisskeyHealth"), misskey_failure]}, "Not ready, or busy."),
                    **_platform_errors(misskey_failure, (400, 414, 431, 500, 501)),
                },
                operationId="misskey_health",
            )
        },
        "/compat/misskey/v1/detect-images": {
            "post": _operation(
                "Misskey's sensitive media detection (sensitive-detector's protocol): image0...imageN.",
                {
                    "200": _json(_ref("MisskeyResults"), "One result per part, in part order."),
                    **_platform_errors(misskey_failure, (400, 401, 403, 408, 413, 414, 415, 429, 431, 500, 501, 503)),
                },
                operationId="misskey_detect_images",
                requestBody={
                    "required": True,
                    "content": {
                        "multipart/form-data": {
                            "schema": {
                                "type": "object",
                                "description": "Parts image0, image1, ...: PNG (any image Pillow reads is taken).",
                                "additionalProperties": {
                                    "type": "string",
                                    "contentMediaType": "application/octet-stream",
                                },
                            }
                        }
                    },
                },
            )
        },
        "/compat/pictrs": {"post": pictrs("pictrs_validate")},
        "/compat/pictrs/{token}": {"post": pictrs("pictrs_validate_token", parameters=token)},
        "/compat/nsfw_api/": {"get": nsfw_api("nsfw_api_classify")},
        "/compat/nsfw_api/{token}/": {"get": nsfw_api("nsfw_api_classify_token", parameters=token)},
        "/compat/discourse/api/v1/classify": {
            "post": _operation(
                "Discourse AI's NSFW classification: percentages, integers 0-100.",
                {
                    "200": _json(
                        {"anyOf": [_ref("DiscourseNsfwDetector"), _ref("DiscourseOpenNsfw2")]},
                        "nsfw_detector: the five classes; opennsfw2: nsfw_probability.",
                    ),
                    **_platform_errors(
                        _ref("DiscourseFailure"),
                        (400, 401, 403, 408, 413, 414, 415, 429, 431, 500, 501, 502, 503, 504),
                    ),
                },
                operationId="discourse_classify",
                requestBody={
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["model", "content"],
                                "properties": {
                                    "model": {"enum": ["nsfw_detector", "opennsfw2"]},
                                    "content": {"type": "string", "description": "The image's URL."},
                                },
                            }
                        }
                    },
                },
            )
        },
    }


_PERCENT: Schema = {"type": "integer", "minimum": 0, "maximum": 100}
_COMPAT_SCHEMAS: dict[str, Schema] = {
    "Landing": {
        "type": "object",
        "required": ["service", "version", "models", "platforms", "links"],
        "properties": {
            "service": {"type": "string"},
            "version": {"type": "string"},
            "models": {"type": "array", "items": {"type": "object"}},
            "platforms": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name", "on", "paste", "where", "key"],
                    "properties": {
                        "name": {"type": "string"},
                        "on": {"type": "boolean"},
                        "paste": {"type": "string"},
                        "where": {"type": "string"},
                        "key": {"type": "string"},
                    },
                },
            },
            "links": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    },
    "MisskeyHealth": {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"enum": ["ok", "unavailable"]}, "reason": {"type": "string"}},
    },
    "MisskeyFailure": {
        "type": "object",
        "required": ["success", "error"],
        "properties": {
            "success": {"const": False},
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
    "MisskeyResults": {
        "type": "object",
        "required": ["success", "result"],
        "properties": {
            "success": {"const": True},
            "result": {
                "type": "object",
                "required": ["results"],
                "properties": {
                    "results": {
                        "type": "array",
                        "items": {
                            "anyOf": [
                                {
                                    "type": "object",
                                    "required": ["success", "predictions"],
                                    "properties": {
                                        "success": {"const": True},
                                        "predictions": {
                                            "type": "array",
                                            "items": {
                                                "type": "object",
                                                "required": ["className", "probability"],
                                                "properties": {
                                                    "className": {
                                                        "enum": ["Drawing", "Hentai", "Neutral", "Porn", "Sexy"]
                                                    },
                                                    "probability": _PROBABILITY,
                                                },
                                            },
                                        },
                                    },
                                },
                                _ref("MisskeyFailure"),
                            ]
                        },
                    }
                },
            },
        },
    },
    "PictrsAnswer": {
        "type": "object",
        "required": ["message"],
        "properties": {
            "message": {"type": "string"},
            "verdict": {"type": "object"},
            "error": {"type": "object"},
            "accepted": {"type": "string"},
        },
    },
    "NsfwApiScore": {
        "type": "object",
        "required": ["score", "url"],
        "properties": {"score": _PROBABILITY, "url": {"type": "string"}},
    },
    "NsfwApiError": {
        "type": "object",
        "required": ["error_code", "error_reason", "url"],
        "properties": {
            "error_code": {"type": "integer"},
            "error_reason": {"type": "string"},
            "url": {"type": ["string", "null"]},
        },
    },
    "DiscourseNsfwDetector": {
        "type": "object",
        "required": ["drawings", "hentai", "neutral", "porn", "sexy"],
        "properties": {name: _PERCENT for name in ("drawings", "hentai", "neutral", "porn", "sexy")},
        "additionalProperties": False,
    },
    "DiscourseOpenNsfw2": {
        "type": "object",
        "required": ["nsfw_probability"],
        "properties": {"nsfw_probability": _PERCENT},
        "additionalProperties": False,
    },
    "DiscourseFailure": {
        "type": "object",
        "required": ["error", "status"],
        "properties": {"error": {"type": "string"}, "status": {"type": "integer"}, "code": {"type": "string"}},
    },
}


# The review API's answers (nsfw/review/views.py): the keys and limits first, then the store.
_REVIEW = (400, 401, 403, 404, 408, 413, 414, 429, 431, 500, 501, 503)


def _review_paths() -> Schema:
    """The review queue's routes (NSFW_REVIEW=true; a key with the review scope)."""
    item = _json(_ref("ReviewItem"), "The item.")
    item_id = [{"name": "review_id", "in": "path", "required": True, "schema": {"type": "string"}}]
    decision_body = {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["label"],
                    "properties": {
                        "label": {"enum": ["adult", "safe"]},
                        "note": {"type": "string", "description": "Sent with review.decided; up to 2000 characters."},
                        "reason_code": {"type": "string", "description": "One of NSFW_REVIEW_REASONS."},
                    },
                }
            }
        },
    }

    def note_body(name: str, description: str) -> Schema:
        return {
            "required": False,
            "content": {
                "application/json": {
                    "schema": {"type": "object", "properties": {name: {"type": "string", "description": description}}}
                }
            },
        }

    appeal_body = {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["statement"],
                    "properties": {
                        "statement": {"type": "string", "minLength": 1, "maxLength": 5000},
                        "ref": {"type": "string", "description": "One of this key's refs on the item."},
                    },
                }
            }
        },
    }
    appealed = {
        "type": "object",
        "required": ["id", "status", "kind", "appeal"],
        "properties": {
            "id": {"type": "string"},
            "status": {"enum": ["pending"]},
            "kind": {"enum": ["appeal"]},
            "appeal": {"type": "object"},
        },
    }

    def action(summary: str, name: str, **more: Any) -> Schema:
        """A POST on one item that answers the item, or 409 for its state."""
        responses = _responses(item, (*_REVIEW, 409))
        return {"post": _operation(summary, responses, operationId=f"review_{name}", parameters=item_id, **more)}

    return {
        "/reviews": {
            "get": _operation(
                "Items of a status, oldest first, a page at a time.",
                _responses(
                    _json(
                        {
                            "type": "object",
                            "required": ["items", "next_cursor", "total"],
                            "properties": {
                                "items": {"type": "array", "items": _ref("ReviewItem")},
                                "next_cursor": {"type": ["string", "null"]},
                                "total": {"type": "integer", "description": "Items of this status in all."},
                            },
                        },
                        "A page.",
                    ),
                    _REVIEW,
                ),
                operationId="reviews",
                parameters=[
                    _query("status", {"enum": ["pending", "decided", "expired"]}, "Default pending."),
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": 100}, "Default 50."),
                    _query("cursor", {"type": "string"}, "The previous page's next_cursor."),
                    _query(
                        "escalated",
                        {"enum": ["true", "false"]},
                        "Only the items escalated to the leads, or only the others. Default: all.",
                    ),
                ],
            )
        },
        "/reviews/export": {
            "get": _operation(
                "Every decided item with its scores, label, moderator and times: a labelled data set.",
                _responses(
                    {"description": "JSON lines or CSV.", "content": {"application/x-ndjson": {}, "text/csv": {}}},
                    _REVIEW,
                ),
                operationId="reviews_export",
                parameters=[_query("format", {"enum": ["jsonl", "csv"]}, "Default jsonl.")],
            )
        },
        "/reviews/webhooks": {
            "get": _operation(
                "The webhook outbox, newest first: delivered, waiting, failed.",
                _responses(_json({"type": "object", "required": ["deliveries"]}, "The deliveries."), _REVIEW),
                operationId="reviews_webhooks",
                parameters=[_query("status", {"enum": ["pending", "delivered", "failed"]}, "Only these.")],
            )
        },
        "/reviews/{review_id}": {
            "get": _operation(
                "One item, with its audit log.", _responses(item, _REVIEW), operationId="review", parameters=item_id
            ),
            "delete": _operation(
                "Delete an item and its remembered decision (kept in the audit log); review.deleted follows.",
                _responses(_json({"type": "object"}, "Deleted."), _REVIEW),
                operationId="review_delete",
                parameters=item_id,
            ),
        },
        "/reviews/{review_id}/thumbnail": {
            "get": _operation(
                "The item's picture: JPEG, longest side 256, never the original bytes.",
                _responses({"description": "The thumbnail.", "content": {"image/jpeg": {}}}, _REVIEW),
                operationId="review_thumbnail",
                parameters=item_id,
            )
        },
        "/reviews/{review_id}/preview": {
            "get": _operation(
                "The item's picture opened full size: JPEG, longest side NSFW_REVIEW_PREVIEW_PX (the thumbnail "
                "for a smaller image), never the original bytes.",
                _responses({"description": "The preview.", "content": {"image/jpeg": {}}}, _REVIEW),
                operationId="review_preview",
                parameters=item_id,
            )
        },
        "/reviews/{review_id}/frames/{position}": {
            "get": _operation(
                "An animation's classified frame as the moderator sees it: JPEG, its place in the strip.",
                _responses({"description": "The frame.", "content": {"image/jpeg": {}}}, _REVIEW),
                operationId="review_frame",
                parameters=[
                    *item_id,
                    {"name": "position", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 0}},
                ],
            )
        },
        "/reviews/{review_id}/claim": action(
            "A lease of NSFW_REVIEW_LEASE seconds on a pending item (only for who may decide it).", "claim"
        ),
        "/reviews/{review_id}/release": action(
            "End the caller's claim (a skip, a closed tab); nothing to release is not an error.", "release"
        ),
        "/reviews/{review_id}/escalate": action(
            "Hand a pending item to the leads (the note says why): it leaves the moderators' queue.",
            "escalate",
            requestBody=note_body("note", "Why; kept in the audit log."),
        ),
        "/reviews/{review_id}/revert": action(
            "Undo a decision: pending again, its memory gone; review.reverted follows. 409 not_decided when "
            "there is none (another undo won), pending_twin when the image is pending again as another item; "
            "403 lead_only for another moderator's decision unless a lead asks.",
            "revert",
            requestBody=note_body("reason", "Why; kept in the audit log and sent as revert_reason."),
        ),
        "/reviews/{review_id}/appeal": {
            "post": _operation(
                "The client app's user contests a decision (a key with the predict scope that sent the image): "
                "pending again as an appeal, decided by another moderator; review.appeal_decided follows.",
                _responses(_json(appealed, "The item, as its key may see it."), (*_REVIEW, 409)),
                operationId="review_appeal",
                parameters=item_id,
                requestBody=appeal_body,
            )
        },
        "/reviews/{review_id}/decision": action(
            "Decide a pending item, once; its webhook follows.", "decision", requestBody=decision_body
        ),
    }


def _bank_paths() -> Schema:
    """The hash banks (NSFW_REVIEW=true and NSFW_MATCH; a key with the banks scope)."""
    name = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}]
    bank = {
        "type": "object",
        "required": ["name", "label", "distance", "signals", "created", "created_by"],
        "properties": {
            "name": {"type": "string"},
            "label": {"enum": ["adult", "safe"]},
            "distance": {"type": ["integer", "null"], "description": "null: NSFW_MATCH_DISTANCE"},
            "signals": {"type": "integer"},
            "created": {"type": "string"},
            "created_by": {"type": "string"},
        },
    }
    lines = {"type": "string", "description": "One PDQ hash (64 hex digits) a line, with optional ,quality,note."}
    signals_body = {
        "required": True,
        "description": "Hashes (text/plain or text/csv lines, or JSON Lines with pdq, quality, note), one hash "
        "as JSON {pdq, note, quality}, or an image to hash (as /predict takes it: each classified frame one "
        "signal).",
        "content": {
            "text/plain": {"schema": lines},
            "text/csv": {"schema": lines},
            "application/x-ndjson": {"schema": {"type": "string"}},
            "application/json": {
                "schema": {
                    "anyOf": [
                        {
                            "type": "object",
                            "required": ["pdq"],
                            "properties": {
                                "pdq": {"type": "string", "pattern": "^[0-9a-fA-F]{64}$"},
                                "note": {"type": "string"},
                                "quality": {"type": "integer", "minimum": 0, "maximum": 100},
                            },
                        },
                        _ref("UrlBody"),
                        _ref("Base64Body"),
                    ]
                }
            },
            "multipart/form-data": _IMAGE_BODY["content"]["multipart/form-data"],
            "image/*": _IMAGE_BODY["content"]["image/*"],
        },
    }
    added = {
        "type": "object",
        "required": ["bank", "received", "added"],
        "properties": {
            "bank": {"type": "string"},
            "received": {"type": "integer"},
            "added": {"type": "integer"},
            "rereview": {
                "type": "array",
                "description": "An adult bank's: decided-safe items the new signals match, nearest first.",
                "items": {
                    "type": "object",
                    "required": ["id", "distance"],
                    "properties": {"id": {"type": "string"}, "distance": {"type": "integer"}},
                },
            },
            "rereview_more": {"type": "integer"},
            "rereview_skipped": {"type": "string"},
        },
    }
    return {
        "/banks": {
            "get": _operation(
                "Every bank, with its label, distance and number of signals.",
                _responses(
                    _json(
                        {
                            "type": "object",
                            "required": ["banks"],
                            "properties": {"banks": {"type": "array", "items": bank}},
                        },
                        "The banks.",
                    ),
                    _REVIEW,
                ),
                operationId="banks",
            ),
            "post": _operation(
                "Make a bank: adult (a match is adult) or safe (an automatic adult verdict goes to a human).",
                {"201": _json(bank, "The bank."), **_errors(*sorted((*_REVIEW, 409)))},
                operationId="bank_create",
                requestBody={
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["name", "label"],
                                "properties": {
                                    "name": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"},
                                    "label": {"enum": ["adult", "safe"]},
                                    "distance": {"type": "integer", "minimum": 0, "maximum": 128},
                                },
                            }
                        }
                    },
                },
            ),
        },
        "/banks/{name}": {
            "get": _operation(
                "One bank.", _responses(_json(bank, "The bank."), _REVIEW), operationId="bank", parameters=name
            ),
            "delete": _operation(
                "Delete a bank and its signals (every worker stops matching them within seconds).",
                _responses(_json({"type": "object"}, "Deleted."), _REVIEW),
                operationId="bank_delete",
                parameters=name,
            ),
        },
        "/banks/{name}/signals": {
            "post": _operation(
                "Add signals: hashes, or an image to hash.",
                _responses(_json(added, "What was added."), (*_REVIEW, 415, 422, 502, 504)),
                operationId="bank_signals_add",
                parameters=name,
                requestBody=signals_body,
            ),
            "get": _operation(
                "The bank's signals in the order added: CSV (pdq[,quality[,note]], as pdq-photo-hasher and HMA "
                "files are) or JSON Lines.",
                _responses(
                    {"description": "CSV or JSON lines.", "content": {"text/csv": {}, "application/x-ndjson": {}}},
                    _REVIEW,
                ),
                operationId="bank_signals_export",
                parameters=[*name, _query("format", {"enum": ["csv", "jsonl"]}, "Default csv.")],
            ),
        },
    }


# The moderator's pages answer HTML (their own errors too) or, from the front door, the JSON shape.
_PAGE_STATUSES = (200, 302, 400, 401, 404, 405, 408, 409, 413, 414, 429, 431, 500, 501, 503)


def _page(summary: str, operation_id: str, **more: Any) -> Schema:
    either = {"text/html": {}, "application/json": {}}
    responses = {
        str(status): {"description": "The page, a redirect, or an error.", "content": either}
        for status in _PAGE_STATUSES
    }
    responses["302"] = {"description": "To the sign-in page (no session), or onwards after a form."}
    return {
        "summary": summary,
        "security": [{"session": []}, {}],
        "responses": responses,
        "operationId": operation_id,
        **more,
    }


def _form(*fields: str) -> Schema:
    properties = {name: {"type": "string"} for name in ("csrf_token", *fields)}
    return {
        "required": True,
        "content": {"application/x-www-form-urlencoded": {"schema": {"type": "object", "properties": properties}}},
    }


def _page_paths() -> Schema:
    """The moderator's pages (NSFW_REVIEW=true; a moderator's session, not a key)."""
    item_id = [{"name": "review_id", "in": "path", "required": True, "schema": {"type": "string"}}]
    return {
        "/review": {"get": _page("The queue: pending items, one at a time.", "page_queue")},
        "/review/login": {
            "get": _page("The sign-in form.", "page_login"),
            "post": _page(
                "Sign in (limited per name and address).", "page_login_post", requestBody=_form("username", "password")
            ),
        },
        "/review/logout": {"post": _page("Sign out.", "page_logout", requestBody=_form())},
        "/review/leads": {"get": _page("The leads' view: the escalated items.", "page_leads")},
        "/review/settings": {
            "get": _page("This moderator's wellbeing settings.", "page_settings_form"),
            "post": _page(
                "Save this moderator's wellbeing settings.",
                "page_settings",
                requestBody=_form(
                    "blur", "blur_px", "greyscale", "hold_to_peek", "hide_scores", "session_reveals", "daily_reveals"
                ),
            ),
        },
        "/review/items/{review_id}": {
            "get": _page("One item with its whole history and webhook deliveries.", "page_item", parameters=item_id)
        },
        "/review/items/{review_id}/reveal": {
            "post": _page(
                "The page revealed an item: counted; the moderator's exposure answered (JSON).",
                "page_reveal",
                parameters=item_id,
            )
        },
        "/review/search": {
            "get": _page(
                "Items by ref, status, label, kind, moderator, day range and adult score range, newest first.",
                "page_search",
            )
        },
        "/review/search/decide": {
            "post": _page(
                "Decide the selected pending items with one label and reason, item by item.",
                "page_bulk_decide",
                requestBody=_form("id", "label", "reason", "note", "back"),
            )
        },
        "/review/insights/adapter": {
            "post": _page(
                "A lead trains a new adapter version, promotes a version that passed, or demotes the served one.",
                "page_adapter",
                requestBody=_form("action", "version"),
            )
        },
        "/review/team": {"get": _page("The queue's depth, decisions per moderator per day, agreement.", "page_team")},
        "/review/history": {"get": _page("Decided items, newest first, with undo.", "page_history")},
        "/review/history/{review_id}/undo": {
            "post": _page(
                "Undo a decision of the last 10 minutes, with a reason (another's: a lead only).",
                "page_undo",
                parameters=item_id,
                requestBody=_form("reason"),
            )
        },
        "/review/insights": {"get": _page("What the decisions teach the thresholds.", "page_insights")},
        "/review/static/{filename}": {
            "get": _page(
                "The pages' stylesheet and script.",
                "page_static",
                parameters=[{"name": "filename", "in": "path", "required": True, "schema": {"type": "string"}}],
            )
        },
    }


# Swagger UI's files, as flask-swagger-ui pins them; served are only those the page loads (not its
# OAuth redirect page: this API has no OAuth flow).
SWAGGER_UI_DIR = Path(flask_swagger_ui.__file__).parent / "dist"
_ASSETS = frozenset(
    {
        "index.css",
        "swagger-ui.css",
        "favicon-32x32.png",
        "favicon-16x16.png",
        "swagger-ui-bundle.js",
    }
)
_INITIALIZER = "swagger-initializer.js"

# What Swagger UI 5.34 needs, and no more (tests/test_docs_browser.py loads it in Chromium under this
# policy, tries an operation and reads the console): its scripts and stylesheets from 'self' (React
# sets styles through the DOM, which style-src does not govern); img-src data: for the icons
# swagger-ui.css inlines as data: URLs, blob: for an image answer that "Try it out" shows (a
# review's thumbnail); connect-src 'self' for /openapi.json and "Try it out". No form is ever
# submitted (the Authorize dialog handles its own), no frame, no base, and nobody may frame it.
DOCS_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
)

_PAGE = f"""<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>nsfw-api</title>
  <link rel="stylesheet" href="{DOCS_PATH}/index.css">
  <link rel="stylesheet" href="{DOCS_PATH}/swagger-ui.css">
  <link rel="icon" type="image/png" href="{DOCS_PATH}/favicon-32x32.png" sizes="32x32">
  <link rel="icon" type="image/png" href="{DOCS_PATH}/favicon-16x16.png" sizes="16x16">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="{DOCS_PATH}/swagger-ui-bundle.js"></script>
  <script src="{DOCS_PATH}/{_INITIALIZER}"></script>
</body>
</html>
"""

# BaseLayout: the standalone layout's top bar (a box to load another document, and a logo whose SVG
# carries an inline <style>) is not wanted here. validatorUrl null: otherwise Swagger UI shows a badge
# image from validator.swagger.io.
_INITIALIZER_JS = f"""window.addEventListener("load", function () {{
  window.ui = SwaggerUIBundle({{
    url: {json.dumps(OPENAPI_PATH)},
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  }});
}});
"""


def _docs_headers(response: Response) -> Response:
    """DOCS_CSP and its companions on every answer under /docs, the redirect and 404s too."""
    if request.path == DOCS_PATH or request.path.startswith(f"{DOCS_PATH}/"):
        response.headers["Content-Security-Policy"] = DOCS_CSP
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "same-origin"
        response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def install(app: Flask) -> None:
    """GET /openapi.json, and Swagger UI at /docs/ from flask-swagger-ui's files (nothing from a CDN,
    no inline script)."""

    @app.get(OPENAPI_PATH)
    def openapi_document() -> Response:
        return jsonify(document())

    @app.get(f"{DOCS_PATH}/")
    def docs() -> Response:
        return Response(_PAGE, mimetype="text/html")

    @app.get(f"{DOCS_PATH}/<path:path>")
    def docs_asset(path: str) -> Response:
        if path == _INITIALIZER:
            return Response(_INITIALIZER_JS, mimetype="text/javascript")
        if path not in _ASSETS:
            raise NotFound()
        return send_from_directory(SWAGGER_UI_DIR, path)

    app.after_request(_docs_headers)
