from __future__ import annotations

import pytest

from nsfw import errors


def _all(cls: type[errors.NsfwError]) -> list[type[errors.NsfwError]]:
    return [cls] + [sub for child in cls.__subclasses__() for sub in _all(child)]


ALL = _all(errors.NsfwError)


def test_codes_are_unique() -> None:
    codes = [cls.code for cls in ALL]
    assert len(codes) == len(set(codes))


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_public_shape_never_carries_the_detail(cls: type[errors.NsfwError]) -> None:
    err = cls("resolved 10.0.0.7, upstream said <secret>")
    assert err.to_dict() == {"error": {"code": cls.code, "message": cls.message}}
    assert "10.0.0.7" not in cls.message and 400 <= cls.status <= 599


def test_status_table_of_style_md() -> None:
    assert {cls.code: cls.status for cls in ALL} == {
        "internal_error": 500,
        "bad_request": 400,
        "invalid_url": 400,
        "missing_url": 400,
        "invalid_base64": 400,
        "too_many_images": 400,
        "too_many_items": 400,
        "unknown_model": 400,
        "model_not_served": 400,
        "unreadable_file": 400,
        "invalid_policy": 400,
        "invalid_json": 400,
        "url_scheme_not_allowed": 400,
        "url_not_allowed": 400,
        "url_port_not_allowed": 400,
        "unauthorized": 401,
        "unsupported_media_type": 415,
        "spool_unavailable": 503,
        "invalid_video": 422,
        "video_too_long": 422,
        "video_too_complex": 422,
        "forbidden": 403,
        "rate_limited": 429,
        "pending_twin": 409,
        "not_found": 404,
        "method_not_allowed": 405,
        "payload_too_large": 413,
        "request_timeout": 408,
        "uri_too_long": 414,
        "headers_too_large": 431,
        "not_implemented": 501,
        "image_too_large": 422,
        "invalid_image": 422,
        "unsupported_image_format": 422,
        "image_too_many_pixels": 422,
        "image_too_large_to_decode": 422,
        "image_too_complex": 422,
        "download_budget_exceeded": 422,
        "upstream_error": 502,
        "too_many_redirects": 502,
        "upstream_timeout": 504,
        "deadline_exceeded": 504,
        "unavailable": 503,
        "overloaded": 503,
        # The review queue's.
        "invalid_label": 400,
        "claimed": 409,
        "already_decided": 409,
        "not_decided": 409,
        "invalid_appeal": 400,
        "lead_only": 403,
        "same_moderator": 409,
        "already_appealed": 409,
        "too_many_appeals": 429,
        "review_store_unavailable": 503,
        "rate_limit_unavailable": 503,
        # The hash banks'.
        "invalid_bank": 400,
        "invalid_signals": 400,
        "bank_exists": 409,
        "too_many_signals": 413,
        # The adapters'.
        "unknown_adapter": 404,
        "adapter_refused": 409,
        "not_enough_decisions": 409,
    }
    assert errors.Overloaded.headers["Retry-After"] and errors.Unavailable.headers["Retry-After"]
