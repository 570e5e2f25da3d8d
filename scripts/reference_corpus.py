"""The parity corpus that travels with the repository: tests/data/reference/corpus/ and its MANIFEST.tsv.

    python -m scripts.reference_corpus [--wheels DIR]        # then python -m scripts.nsfwjs_reference --corpus

Every image is either a byte-identical copy of a file shipped inside a pinned PyPI wheel
(scikit-image, matplotlib: CC0, public domain or BSD-style), a variant made from one of them here,
or drawn here with numpy from a fixed seed. The wheels are fetched with `pip download` (a package
registry, at build time only) and each copied file is checked against its pinned sha256, so the
provenance in MANIFEST.tsv can be verified by anyone. The variants cover what the service must read
like nsfwjs does: baseline and progressive JPEG, every EXIF orientation, CMYK, grayscale, 16-bit,
palette, 1-bit and alpha PNG, GIF and animated GIF, APNG, lossy, lossless, alpha and animated WebP,
24-, 32- and 8-bit BMP, tiny images, extreme aspect ratios, exact model sizes, and one TIFF (refused).

The two big variants (a 4096x4096 JPEG and a 4096x4096 lossy WebP of about 4 MB) are not committed:
`big_variants()` makes them from committed corpus files, and the test run has nsfwjs score them live.
`reference_rgb` is the decode the reference follows (../shared/reference/README.md, variant `main`),
written here on plain Pillow so it does not share code with nsfw/imaging/decode.py, which it checks.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import struct
import sys
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from scripts.build_models import pip_download

REPO = Path(__file__).resolve().parents[1]
REFERENCE_DIR = REPO / "tests" / "data" / "reference"
CORPUS_DIR = REFERENCE_DIR / "corpus"
PILLOW = "13.0.0"  # the encoder of every variant (requirements.txt pins it)


@dataclass(frozen=True)
class Wheel:
    package: str
    version: str
    licence_note: str


SKIMAGE = Wheel("scikit-image", "0.26.0", "per-image notes in skimage/data/_fetchers.py")
MATPLOTLIB = Wheel("matplotlib", "3.11.2", "matplotlib licence (PSF-style, BSD-compatible)")


@dataclass(frozen=True)
class Original:
    """A file copied unchanged out of a wheel."""

    name: str
    wheel: Wheel
    member: str
    sha256: str
    licence: str
    category: str


ORIGINALS: tuple[Original, ...] = (
    Original(
        "astronaut.png",
        SKIMAGE,
        "skimage/data/astronaut.png",
        "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5",
        "public domain (NASA)",
        "photo/person",
    ),
    Original(
        "brick.png",
        SKIMAGE,
        "skimage/data/brick.png",
        "7966caf324f6ba843118d98f7a07746d22f6a343430add0233eca5f6eaaa8fcf",
        "CC0 (CC0Textures)",
        "texture;grayscale",
    ),
    Original(
        "camera.png",
        SKIMAGE,
        "skimage/data/camera.png",
        "b0793d2adda0fa6ae899c03989482bff9a42d3d5690fc7e3648f2795d730c23a",
        "CC0 (Lav Varshney)",
        "photo/person;grayscale",
    ),
    Original(
        "cell.png",
        SKIMAGE,
        "skimage/data/cell.png",
        "8d23a7fb81f7cc877cd09f330357fc7f595651306e84e17252f6e0a1b3f61515",
        "CC0",
        "microscopy;grayscale",
    ),
    Original(
        "chelsea.png",
        SKIMAGE,
        "skimage/data/chelsea.png",
        "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb",
        "CC0 (Stefan van der Walt)",
        "photo/animal",
    ),
    Original(
        "chessboard_RGB.png",
        SKIMAGE,
        "skimage/data/chessboard_RGB.png",
        "1ac01eff2d4e50f4eda55a2ddecdc28a6576623a58d7a7ef84513c5cc19a0331",
        "public domain",
        "synthetic;tiny",
    ),
    Original(
        "clock_motion.png",
        SKIMAGE,
        "skimage/data/clock_motion.png",
        "f029226b28b642e80113d86622e9b215ee067a0966feaf5e60604a1e05733955",
        "CC0",
        "photo/object;grayscale",
    ),
    Original(
        "coffee.png",
        SKIMAGE,
        "skimage/data/coffee.png",
        "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7",
        "CC0 (Rachel Michetti)",
        "photo/object",
    ),
    Original(
        "coins.png",
        SKIMAGE,
        "skimage/data/coins.png",
        "f8d773fc9cfa6f4d8e5942dc34d0a0788fcaed2a4fefbbed0aef5398d7ef4cba",
        "no known copyright restrictions (Brooklyn Museum)",
        "photo/object;grayscale",
    ),
    Original(
        "color.png",
        SKIMAGE,
        "skimage/data/color.png",
        "7d2df993de2b4fa2a78e04e5df8050f49a9c511aa75e59ab3bd56ac9c98aef7e",
        "scikit-image BSD-3-Clause",
        "abstract",
    ),
    Original(
        "grass.png",
        SKIMAGE,
        "skimage/data/grass.png",
        "b6b6022426b38936c43a4ac09635cd78af074e90f42ffa8227ac8b7452d39f89",
        "CC0 (linolafett, DeviantArt)",
        "texture;grayscale",
    ),
    Original(
        "gravel.png",
        SKIMAGE,
        "skimage/data/gravel.png",
        "c48615b451bf1e606fbd72c0aa9f8cc0f068ab7111ef7d93bb9b0f2586440c12",
        "CC0 (CC0Textures)",
        "texture;grayscale",
    ),
    Original(
        "horse.png",
        SKIMAGE,
        "skimage/data/horse.png",
        "c7fb60789fe394c485f842291ea3b21e50d140f39d6dcb5fb9917cc178225455",
        "CC0 (Andreas Preuss)",
        "silhouette",
    ),
    Original(
        "hubble_deep_field.jpg",
        SKIMAGE,
        "skimage/data/hubble_deep_field.jpg",
        "3a19c5dd8a927a9334bb1229a6d63711b1c0c767fb27e2286e7c84a3e2c2f5f4",
        "public domain (NASA)",
        "photo/science",
    ),
    Original(
        "ihc.png",
        SKIMAGE,
        "skimage/data/ihc.png",
        "f8dd1aa387ddd1f49d8ad13b50921b237df8e9b262606d258770687b0ef93cef",
        "CC0 (Genevieve Buckley)",
        "microscopy",
    ),
    Original(
        "logo.png",
        SKIMAGE,
        "skimage/data/logo.png",
        "f2c57fe8af089f08b5ba523d95573c26e62904ac5967f4c8851b27d033690168",
        "scikit-image BSD-3-Clause",
        "logo;alpha",
    ),
    Original(
        "microaneurysms.png",
        SKIMAGE,
        "skimage/data/microaneurysms.png",
        "a1e1be59aa447f8ce082f7fa809997ab369a2b137cb6c4202abc647c7ccf6456",
        "CC0 (Andreas Maier)",
        "medical;grayscale;small",
    ),
    Original(
        "moon.png",
        SKIMAGE,
        "skimage/data/moon.png",
        "78739619d11f7eb9c165bb5d2efd4772cee557812ec847532dbb1d92ef71f577",
        "no known copyright restrictions",
        "photo/science;grayscale",
    ),
    Original(
        "page.png",
        SKIMAGE,
        "skimage/data/page.png",
        "341a6f0a61557662b02734a9b6e56ec33a915b2c41886b97509dedf2a43b47a3",
        "no known copyright restrictions",
        "text;grayscale",
    ),
    Original(
        "phantom.png",
        SKIMAGE,
        "skimage/data/phantom.png",
        "552ff698167aa402cceb17981130607a228a0a0aa7c519299eaa4d5f301ba36c",
        "public domain",
        "synthetic;grayscale",
    ),
    Original(
        "retina.jpg",
        SKIMAGE,
        "skimage/data/retina.jpg",
        "38a07f36f27f095e818aea7b96d34202c05176d30253c66733f2e00379e9e0e6",
        "CC0 (Mikael Häggström)",
        "medical",
    ),
    Original(
        "rocket.jpg",
        SKIMAGE,
        "skimage/data/rocket.jpg",
        "c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c",
        "public domain (SpaceX, CC0)",
        "photo/object",
    ),
    Original(
        "text.png",
        SKIMAGE,
        "skimage/data/text.png",
        "bd84aa3a6e3c9887850d45d606c96b2e59433fbef50338570b63c319e668e6d1",
        "public domain",
        "text;grayscale",
    ),
    Original(
        "no_time_for_that_tiny.gif",
        SKIMAGE,
        "skimage/data/no_time_for_that_tiny.gif",
        "20abe94ba9e45f18de416c5fbef8d1f57a499600be40f9a200fae246010eefce",
        "scikit-image BSD-3-Clause",
        "animated;tiny",
    ),
    Original(
        "grace_hopper.jpg",
        MATPLOTLIB,
        "matplotlib/mpl-data/sample_data/grace_hopper.jpg",
        "a8ca6d734765703b09728ab47fe59f473d93ae3967fc24c7c0288c3c7adb7130",
        "public domain (US Navy photo)",
        "photo/person",
    ),
    Original(
        "Minduka_Present_Blue_Pack.png",
        MATPLOTLIB,
        "matplotlib/mpl-data/sample_data/Minduka_Present_Blue_Pack.png",
        "5e72868826a7a4329a950e5a9efa393594807833fb7f27e5cd001a8afb9cd081",
        "public domain clip art (Minduka), matplotlib sample data",
        "clipart;alpha",
    ),
    Original(
        "logo2.png",
        MATPLOTLIB,
        "matplotlib/mpl-data/sample_data/logo2.png",
        "0d7371e055decaac47cb6e809af3442e9c1ecd02f1c1e2d063d1cfee4b4a21d7",
        "matplotlib licence",
        "logo;alpha",
    ),
)


@dataclass(frozen=True)
class Entry:
    """One corpus file and its provenance (a MANIFEST.tsv row)."""

    name: str
    data: bytes
    source: str  # "PyPI scikit-image 0.26.0 skimage/data/x.png", or "drawn"
    licence: str
    kind: str  # "original (byte-identical copy)", "variant (...)", "drawn (...)"
    category: str


def wheel_file(wheels: Path, wheel: Wheel) -> Path:
    """The pinned wheel of this platform in `wheels`, downloaded with pip if it is not there yet."""
    prefix = f"{wheel.package.replace('-', '_')}-{wheel.version}-"
    found = sorted(wheels.glob(f"{prefix}*.whl"))
    if not found:
        pip_download(f"{wheel.package}=={wheel.version}", wheels)
        found = sorted(wheels.glob(f"{prefix}*.whl"))
    return found[0]


def read_original(wheels: Path, original: Original) -> bytes:
    with zipfile.ZipFile(wheel_file(wheels, original.wheel)) as archive:
        data = archive.read(original.member)
    if (actual := hashlib.sha256(data).hexdigest()) != original.sha256:
        raise SystemExit(f"{original.member}: sha256 {actual}, expected {original.sha256}")
    return data


# --- encoders: each returns file bytes, deterministic for a given Pillow and numpy.


def encode(img: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **options)
    return out.getvalue()


def png16(samples: np.ndarray) -> bytes:
    """A 16-bit RGB (H, W, 3) or grey (H, W) PNG, written directly: Pillow cannot write 16-bit RGB."""
    colour = 2 if samples.ndim == 3 else 0
    height, width = samples.shape[:2]
    rows = samples.astype(">u2").reshape(height, -1)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 16, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


# Stored = the inverse of what EXIF orientation N asks a viewer to do, so the file shows upright.
_STORED_FOR_ORIENTATION: dict[int, Callable[[Image.Image], Image.Image]] = {
    1: lambda img: img,
    2: lambda img: img.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
    3: lambda img: img.transpose(Image.Transpose.ROTATE_180),
    4: lambda img: img.transpose(Image.Transpose.FLIP_TOP_BOTTOM),
    5: lambda img: img.transpose(Image.Transpose.TRANSPOSE),
    6: lambda img: img.transpose(Image.Transpose.ROTATE_90),
    7: lambda img: img.transpose(Image.Transpose.TRANSVERSE),
    8: lambda img: img.transpose(Image.Transpose.ROTATE_270),
}


def exif_jpeg(upright: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(_STORED_FOR_ORIENTATION[orientation](upright), "JPEG", quality=90, exif=exif.tobytes())


def drawn(seed: int, width: int, height: int) -> Image.Image:
    """Gradients, skin-toned and coloured discs and noise, from a fixed seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([x / width, y / height, (x + y) / (width + height)], axis=-1) * rng.uniform(80, 255, 3)
    for _ in range(6):
        cy, cx, r = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(20, min(width, height) / 2)
        tone = rng.choice([np.array([224, 172, 140]), np.array([141, 85, 36]), rng.uniform(0, 255, 3)])
        mask = ((y - cy) ** 2 + (x - cx) ** 2 < r**2)[..., None]
        rgb = np.where(mask, tone, rgb)
    rgb = rgb + rng.normal(0, 8, rgb.shape)
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


def moving_disc_frames(count: int, size: tuple[int, int], seed: int) -> list[Image.Image]:
    """An animation whose frames differ: a disc crossing a drawn background."""
    background = drawn(seed, *size)
    frames = []
    for i in range(count):
        frame = background.copy()
        x = int(size[0] * (0.1 + 0.8 * i / max(count - 1, 1)))
        ImageDraw.Draw(frame).ellipse((x - 30, size[1] // 2 - 30, x + 30, size[1] // 2 + 30), fill=(224, 172, 140))
        frames.append(frame)
    return frames


def radial_alpha(img: Image.Image) -> Image.Image:
    """RGBA with alpha falling from 255 in the middle to 0 at the corners (real transparency)."""
    w, h = img.size
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    distance = np.sqrt(((x - w / 2) / (w / 2)) ** 2 + ((y - h / 2) / (h / 2)) ** 2) / np.sqrt(2)
    alpha = Image.fromarray(np.clip(255 * (1.2 - 1.4 * distance), 0, 255).astype(np.uint8))
    rgba = img.convert("RGBA")
    rgba.putalpha(alpha)
    return rgba


def variants(files: dict[str, bytes]) -> list[tuple[str, bytes, str, str, str]]:
    """(name, bytes, made from, how, category) for every derived or drawn file."""

    def rgb(name: str) -> Image.Image:
        return Image.open(io.BytesIO(files[name])).convert("RGB")

    chelsea, coffee, astronaut, rocket = rgb("chelsea.png"), rgb("coffee.png"), rgb("astronaut.png"), rgb("rocket.jpg")
    camera = Image.open(io.BytesIO(files["camera.png"]))
    minduka = Image.open(io.BytesIO(files["Minduka_Present_Blue_Pack.png"])).convert("RGBA")
    logo = Image.open(io.BytesIO(files["logo.png"])).convert("RGBA")
    out: list[tuple[str, bytes, str, str, str]] = []
    for orientation in range(1, 9):
        out.append(
            (
                f"v_chelsea_exif{orientation}.jpg",
                exif_jpeg(chelsea, orientation),
                "chelsea.png",
                f"pixels stored so that EXIF Orientation={orientation} shows them upright, JPEG q90",
                "exif-orientation",
            )
        )
    palette = astronaut.quantize(256, dither=Image.Dither.NONE)
    transparent = palette.copy()
    transparent.info["transparency"] = 0
    one_bit = Image.open(io.BytesIO(files["text.png"])).convert("L").point(lambda v: 255 if v > 100 else 0).convert("1")
    grey_alpha = camera.convert("L").copy()
    grey_alpha = Image.merge("LA", (grey_alpha, radial_alpha(camera.convert("RGB")).getchannel("A")))
    coffee16 = np.asarray(coffee, np.uint16) * 257
    camera16 = np.asarray(camera.convert("L"), np.uint16) * 257 + np.arange(512, dtype=np.uint16)[None, :] % 200
    frames = moving_disc_frames(12, (320, 240), seed=11)
    gif_frames = [frame.quantize(64, dither=Image.Dither.NONE) for frame in frames]
    out += [
        (
            "v_astronaut_cmyk.jpg",
            encode(astronaut.convert("CMYK"), "JPEG", quality=90),
            "astronaut.png",
            "convert('CMYK'), JPEG q90 (Adobe APP14, inverted CMYK)",
            "cmyk-jpeg",
        ),
        (
            "v_astronaut_gray.jpg",
            encode(astronaut.convert("L"), "JPEG", quality=90),
            "astronaut.png",
            "convert('L'), JPEG q90",
            "grayscale-jpeg",
        ),
        (
            "v_rocket_progressive.jpg",
            encode(rocket, "JPEG", quality=90, progressive=True),
            "rocket.jpg",
            "progressive JPEG q90",
            "progressive-jpeg",
        ),
        (
            "v_coffee_444.jpg",
            encode(coffee, "JPEG", quality=95, subsampling=0),
            "coffee.png",
            "baseline JPEG q95, 4:4:4",
            "baseline-jpeg",
        ),
        (
            "v_astronaut_420.jpg",
            encode(astronaut, "JPEG", quality=75, subsampling=2),
            "astronaut.png",
            "baseline JPEG q75, 4:2:0",
            "baseline-jpeg",
        ),
        ("v_coffee_16bit_rgb.png", png16(coffee16), "coffee.png", "16-bit RGB PNG, value*257 (own writer)", "16-bit"),
        (
            "v_camera_16bit_gray.png",
            png16(camera16),
            "camera.png",
            "16-bit grey PNG, value*257 + column % 200 (low byte varies)",
            "16-bit;grayscale",
        ),
        ("v_astronaut_palette.png", encode(palette, "PNG"), "astronaut.png", "quantize(256), palette PNG", "palette"),
        (
            "v_astronaut_palette_trns.png",
            encode(transparent, "PNG", transparency=0),
            "astronaut.png",
            "palette PNG, index 0 transparent (tRNS)",
            "palette;transparency",
        ),
        ("v_chelsea_rgba.png", encode(radial_alpha(chelsea), "PNG"), "chelsea.png", "RGBA PNG, radial alpha", "alpha"),
        ("v_camera_la.png", encode(grey_alpha, "PNG"), "camera.png", "LA PNG, radial alpha", "alpha;grayscale"),
        ("v_text_1bit.png", encode(one_bit, "PNG"), "text.png", "threshold 100, mode '1' PNG", "1-bit"),
        (
            "v_coffee.gif",
            encode(coffee.quantize(255, dither=Image.Dither.NONE), "GIF"),
            "coffee.png",
            "static GIF, 255 colours",
            "gif",
        ),
        (
            "v_drawn_anim.gif",
            encode(gif_frames[0], "GIF", save_all=True, append_images=gif_frames[1:], duration=80, loop=0),
            "drawn (seed 11)",
            "animated GIF, 12 frames",
            "animated-gif",
        ),
        (
            "v_drawn_anim.png",
            encode(frames[0], "PNG", save_all=True, append_images=frames[1:], duration=80, loop=0),
            "drawn (seed 11)",
            "APNG, 12 frames",
            "animated-png",
        ),
        (
            "v_drawn_anim.webp",
            encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=80, quality=80),
            "drawn (seed 11)",
            "animated lossy WebP, 12 frames",
            "animated-webp",
        ),
        ("v_rocket_lossy.webp", encode(rocket, "WEBP", quality=80), "rocket.jpg", "lossy WebP q80", "webp"),
        ("v_coffee_lossless.webp", encode(coffee, "WEBP", lossless=True), "coffee.png", "lossless WebP", "webp"),
        (
            "v_minduka_alpha.webp",
            encode(minduka, "WEBP", lossless=True),
            "Minduka_Present_Blue_Pack.png",
            "lossless WebP with alpha",
            "webp;alpha",
        ),
        (
            "v_chelsea_alpha_lossy.webp",
            encode(radial_alpha(chelsea), "WEBP", quality=85),
            "chelsea.png",
            "lossy WebP with radial alpha",
            "webp;alpha",
        ),
        (
            "v_chelsea_cmyk.tif",
            encode(chelsea.convert("CMYK"), "TIFF", compression="tiff_adobe_deflate"),
            "chelsea.png",
            "CMYK TIFF, deflate (outside the allow-list: refused)",
            "tiff;cmyk",
        ),
        ("v_chelsea_24bit.bmp", encode(chelsea, "BMP"), "chelsea.png", "24-bit BMP", "bmp"),
        (
            "v_logo_32bit.bmp",
            encode(logo.resize((250, 250), Image.Resampling.LANCZOS), "BMP"),
            "logo.png",
            "resized to 250x250, 32-bit BMP from RGBA (Pillow reads it back as RGB, alpha ignored)",
            "bmp-32bit",
        ),
        ("v_astronaut_8bit.bmp", encode(palette, "BMP"), "astronaut.png", "8-bit palette BMP", "bmp;palette"),
        (
            "v_coffee_1x1.png",
            encode(coffee.resize((1, 1), Image.Resampling.BOX), "PNG"),
            "coffee.png",
            "1x1 (box average)",
            "tiny",
        ),
        (
            "v_chelsea_3x2.jpg",
            encode(chelsea.resize((3, 2), Image.Resampling.BOX), "JPEG", quality=95),
            "chelsea.png",
            "3x2 JPEG",
            "tiny",
        ),
        (
            "v_astronaut_strip_2000x16.jpg",
            encode(astronaut.resize((2000, 16), Image.Resampling.LANCZOS), "JPEG", quality=90),
            "astronaut.png",
            "resized to 2000x16",
            "extreme-aspect",
        ),
        (
            "v_rocket_strip_12x1500.png",
            encode(rocket.resize((12, 1500), Image.Resampling.LANCZOS), "PNG"),
            "rocket.jpg",
            "resized to 12x1500",
            "extreme-aspect",
        ),
        (
            "v_chelsea_crop224.png",
            encode(chelsea.crop((120, 20, 344, 244)), "PNG"),
            "chelsea.png",
            "224x224 crop (120,20)-(344,244): no resize for mobilenet_v2",
            "exact-224",
        ),
        (
            "v_coffee_crop299.png",
            encode(coffee.crop((150, 50, 449, 349)), "PNG"),
            "coffee.png",
            "299x299 crop (150,50)-(449,349): no resize for inception_v3",
            "exact-299",
        ),
        (
            "v_drawn_640x480.jpg",
            encode(drawn(21, 640, 480), "JPEG", quality=88),
            "drawn (seed 21)",
            "gradients, skin-toned discs, noise; JPEG q88",
            "drawn",
        ),
        (
            "v_drawn_1500x1000.jpg",
            encode(drawn(22, 1500, 1000), "JPEG", quality=85),
            "drawn (seed 22)",
            "gradients, skin-toned discs, noise; JPEG q85",
            "drawn;large",
        ),
    ]
    return out


def make_corpus(wheels: Path) -> list[Entry]:
    files = {o.name: read_original(wheels, o) for o in ORIGINALS}
    entries = [
        Entry(
            o.name,
            files[o.name],
            f"PyPI {o.wheel.package} {o.wheel.version} {o.member}",
            o.licence,
            "original (byte-identical copy)",
            o.category,
        )
        for o in ORIGINALS
    ]
    by_name = {o.name: o for o in ORIGINALS}
    for name, data, origin, how, category in variants(files):
        if origin in by_name:
            source = by_name[origin]
            entries.append(
                Entry(
                    name,
                    data,
                    f"PyPI {source.wheel.package} {source.wheel.version} {source.member}",
                    source.licence,
                    f"variant (Pillow {PILLOW}): {how}",
                    category,
                )
            )
        else:
            entries.append(Entry(name, data, origin, "CC0 (made by this script)", f"drawn: {how}", category))
    return entries


def big_variants(corpus: Path = CORPUS_DIR) -> dict[str, bytes]:
    """The 4096x4096 images, made at test time from committed files (too big to commit)."""
    astronaut = Image.open(corpus / "astronaut.png").convert("RGB")
    gravel = Image.open(corpus / "gravel.png").convert("RGB")
    rng = np.random.default_rng(4096)
    big = np.asarray(astronaut.resize((4096, 4096), Image.Resampling.BICUBIC), np.int16)
    big = np.clip(big + rng.integers(-12, 13, big.shape, dtype=np.int16), 0, 255).astype(np.uint8)
    texture = np.asarray(gravel.resize((4096, 4096), Image.Resampling.BICUBIC), np.int16)
    tint = np.array([30, 0, -20], np.int16)
    texture = np.clip(texture + tint + rng.integers(-20, 21, texture.shape, dtype=np.int16), 0, 255).astype(np.uint8)
    return {
        "big_astronaut_4096.jpg": encode(Image.fromarray(big), "JPEG", quality=90),
        "big_gravel_4096.webp": encode(Image.fromarray(texture), "WEBP", quality=80),
    }


# --- the reference decode and GantMan's pipeline, on plain Pillow.


def reference_rgb(data: bytes, *, exif: bool = True) -> np.ndarray:
    """RGB uint8 as nsfwjs was fed: first frame, EXIF applied, alpha dropped, 16-bit by its high byte."""
    img = Image.open(io.BytesIO(data))
    img.seek(0)
    if exif:
        img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        return np.repeat((np.asarray(img, np.uint32) >> 8).astype(np.uint8)[..., None], 3, axis=2)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode == "PA":
        img = img.convert("RGBA")
    return np.asarray(img.convert("RGB"), np.uint8)


def gantman_tensor(data: bytes, size: int = 224) -> np.ndarray:
    """GantMan's nsfw_detector: Keras load_img(target_size) = Pillow open, RGB, NEAREST; then /255."""
    img = Image.open(io.BytesIO(data))
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img.resize((size, size), Image.Resampling.NEAREST), np.float32) / 255


def describe(data: bytes) -> dict[str, object]:
    img = Image.open(io.BytesIO(data))
    return {
        "format": img.format,
        "mode": img.mode,
        "n_frames": getattr(img, "n_frames", 1),
        "exif_orientation": img.getexif().get(0x0112),
        "size": img.size,
    }


def write_corpus(entries: list[Entry], out: Path = CORPUS_DIR) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.iterdir():
        stale.unlink()
    rows = ["file\tsha256\tbytes\tformat\tmode\tsize_wxh\tframes\tsource\tlicence\tkind\tcategory"]
    for entry in sorted(entries, key=lambda e: e.name):
        (out / entry.name).write_bytes(entry.data)
        info = describe(entry.data)
        w, h = info["size"]  # type: ignore[misc]
        rows.append(
            "\t".join(
                [
                    entry.name,
                    hashlib.sha256(entry.data).hexdigest(),
                    str(len(entry.data)),
                    str(info["format"]),
                    str(info["mode"]),
                    f"{w}x{h}",
                    str(info["n_frames"]),
                    entry.source,
                    entry.licence,
                    entry.kind,
                    entry.category,
                ]
            )
        )
    (out / "MANIFEST.tsv").write_text("\n".join(rows) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheels", type=Path, default=REPO / ".cache" / "wheels", help="where the wheels are kept")
    args = parser.parse_args(argv)
    entries = make_corpus(args.wheels)
    write_corpus(entries)
    total = sum(len(e.data) for e in entries)
    print(f"wrote {len(entries)} files ({total / 1e6:.1f} MB) to {CORPUS_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
