from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
from PIL import Image

from nsfw import errors
from nsfw.imaging.decode import decode, sniff_format
from nsfw.imaging.recipes import preprocess
from nsfw.imaging.resize import resize_gantman, resize_nsfwjs, resize_nsfwjs_image
from tests.reference import Corpus
from tests.support import encode

MAX_PIXELS = 40_000_000


def _decode(data: bytes, **kw: object) -> np.ndarray:
    return np.asarray(decode(io.BytesIO(data), max_pixels=kw.pop("max_pixels", MAX_PIXELS), **kw))


def test_decode_matches_the_reference_pixels_for_every_image(reference: Corpus) -> None:
    """Our decode gives exactly the RGB bytes nsfwjs was fed (variant `main`), for every format."""
    checked = 0
    for name, info in reference.images().items():
        data = reference.image_bytes(name)
        if info["format"] == "TIFF":
            with pytest.raises(errors.UnsupportedImageFormat):
                _decode(data)
            continue
        rgb = _decode(data)
        main = info["variants"]["main"]
        assert rgb.shape == (main["h"], main["w"], 3), name
        assert hashlib.sha256(rgb.tobytes()).hexdigest() == main["rgb_sha256"], name
        checked += 1
    assert checked >= 60


def test_resize_reproduces_the_nsfwjs_tensors(reference: Corpus) -> None:
    tensors = reference.resize_tensors(224)
    assert len(tensors) >= 4
    for tensor in tensors:
        rgb = _decode(reference.image_bytes(tensor.source))
        ours = resize_nsfwjs(rgb, 224)
        assert ours.dtype == np.float32
        assert np.abs(ours - tensor.x.reshape(224, 224, 3)).max() <= 1e-6, tensor.source


@pytest.mark.parametrize(
    ("head", "fmt"),
    [
        (b"\xff\xd8\xff\xe0", "JPEG"),
        (b"\x89PNG\r\n\x1a\n", "PNG"),
        (b"GIF89a", "GIF"),
        (b"GIF87a", "GIF"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "WEBP"),
        (b"BM", "BMP"),
    ],
)
def test_sniff_allowed_formats(head: bytes, fmt: str) -> None:
    assert sniff_format(head + b"\x00" * 8) == fmt


@pytest.mark.parametrize(
    "head",
    [b"II*\x00", b"MM\x00*", b"8BPS\x00\x01", b"%PDF-1.7", b"%!PS-Adobe", b"<svg xmlns=", b'<?xml version="1.0"?>'],
)
def test_sniff_refuses_known_formats_outside_the_allow_list(head: bytes) -> None:
    with pytest.raises(errors.UnsupportedImageFormat):
        sniff_format(head)


@pytest.mark.parametrize("data", [b"", b"<html><body>hi</body></html>", b'{"a": 1}', b"\x00" * 100])
def test_non_images_are_invalid(data: bytes) -> None:
    with pytest.raises(errors.InvalidImage):
        _decode(data)


def test_content_with_a_valid_magic_but_garbage_is_invalid() -> None:
    with pytest.raises(errors.InvalidImage):
        _decode(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)


def test_truncated_jpeg_and_png_are_refused_not_padded() -> None:
    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 255, (300, 300, 3), dtype=np.uint8))
    for fmt in ("JPEG", "PNG"):
        data = encode(img, fmt)
        with pytest.raises(errors.InvalidImage):
            _decode(data[: len(data) // 2])


def test_pixel_limit_is_checked_before_decoding() -> None:
    data = encode(Image.new("RGB", (300, 200)), "PNG")
    assert _decode(data, max_pixels=60_000).shape == (200, 300, 3)
    with pytest.raises(errors.ImageTooManyPixels):
        _decode(data, max_pixels=59_999)


def test_sixteen_bit_grey_is_scaled_not_clipped() -> None:
    samples = np.array([[0, 256, 32768, 65535]], dtype=np.uint16)
    img = Image.fromarray(samples)
    assert img.mode == "I;16"
    data = encode(img, "PNG")
    rgb = _decode(data)
    assert rgb[0, :, 0].tolist() == [0, 1, 128, 255]
    assert (rgb[..., 0] == rgb[..., 2]).all()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(orientation: int) -> None:
    # A 40x20 image, left half black, right half white, stored so that orientation makes it upright.
    upright = np.zeros((20, 40, 3), np.uint8)
    upright[:, 20:] = 255
    img = Image.fromarray(upright)
    stored = {
        1: img,
        2: img.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
        3: img.rotate(180),
        4: img.transpose(Image.Transpose.FLIP_TOP_BOTTOM),
        5: img.transpose(Image.Transpose.TRANSPOSE),
        6: img.rotate(90, expand=True),
        7: img.transpose(Image.Transpose.TRANSVERSE),
        8: img.rotate(270, expand=True),
    }[orientation]
    exif = Image.Exif()
    exif[0x0112] = orientation
    rgb = _decode(encode(stored, "PNG", exif=exif.tobytes()))
    assert rgb.shape == (20, 40, 3)
    assert rgb[:, :18].max() < 30 and rgb[:, 22:].min() > 225


def test_malformed_exif_is_ignored() -> None:
    img = Image.new("RGB", (8, 8), "red")
    rgb = _decode(encode(img, "JPEG", exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff"))
    assert rgb.shape == (8, 8, 3)


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGBA", "CMYK", "I;16"])
def test_odd_modes_become_rgb(mode: str) -> None:
    img = Image.new(mode, (5, 7))
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    assert _decode(encode(img, fmt)).shape == (7, 5, 3)


def test_palette_with_transparency_keeps_the_stored_colours() -> None:
    img = Image.new("P", (4, 4), 1)
    img.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    data = encode(img, "PNG", transparency=1)
    assert _decode(data)[0, 0].tolist() == [10, 200, 30]


def test_resize_nsfwjs_samples_corners_exactly() -> None:
    rgb = np.random.default_rng(2).integers(0, 256, (97, 131, 3), dtype=np.uint8)
    out = resize_nsfwjs(rgb, 224)
    assert out.shape == (224, 224, 3) and out.dtype == np.float32
    for (y, x), (sy, sx) in {(0, 0): (0, 0), (223, 223): (96, 130), (0, 223): (0, 130)}.items():
        np.testing.assert_allclose(out[y, x], rgb[sy, sx] / 255, atol=1e-6)


def test_resize_nsfwjs_leaves_an_exact_size_image_alone() -> None:
    rgb = np.random.default_rng(3).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    np.testing.assert_array_equal(resize_nsfwjs(rgb, 224), rgb.astype(np.float32) / 255)


def test_resize_gantman_is_pillow_nearest() -> None:
    img = Image.fromarray(np.random.default_rng(4).integers(0, 256, (300, 500, 3), dtype=np.uint8))
    expected = np.asarray(img.resize((224, 224), Image.Resampling.NEAREST), np.float32) / 255
    np.testing.assert_array_equal(resize_gantman(img, 224), expected)


def test_preprocess_refuses_an_unknown_mode() -> None:
    with pytest.raises(ValueError):
        preprocess(io.BytesIO(encode(Image.new("RGB", (4, 4)), "PNG")), size=224, mode="x", max_pixels=99)


@pytest.mark.parametrize("shape", [(3000, 1000), (1000, 3000), (449, 300), (450, 300), (5, 4000)])
def test_resize_from_sampled_rows_equals_the_whole_array(shape: tuple[int, int]) -> None:
    rgb = np.random.default_rng(7).integers(0, 256, (*shape, 3), dtype=np.uint8)
    img = Image.fromarray(rgb, "RGB")
    np.testing.assert_array_equal(resize_nsfwjs_image(img, 224), resize_nsfwjs(rgb, 224))
