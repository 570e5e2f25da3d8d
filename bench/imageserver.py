"""The benchmark's image host: real images over loopback, a few bytes different on every request.

    python -m bench.imageserver PORT_FILE      # writes its port to PORT_FILE, serves until killed

`GET /<name>?n=<i>` answers image <name> with the counter written into a comment (JPEG COM segment,
PNG tEXt chunk, GIF comment extension), so every body is unique and no cache can answer, while the
pixels stay the same. The images are made from the reference corpus at start (deterministic).
"""

from __future__ import annotations

import http.server
import io
import struct
import sys
import zlib
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from PIL import Image, ImageDraw

from bench.harness import REPO, QuietHandler

CORPUS = REPO / "tests" / "data" / "reference" / "corpus"
PHOTO = "rocket.jpg"


def make_images() -> dict[str, bytes]:
    """The four request types of the benchmark, by name."""
    photo = Image.open(CORPUS / PHOTO).convert("RGB")
    images: dict[str, bytes] = {}
    for name, size in (("jpeg_1000x750", (1000, 750)), ("jpeg_4000x3000", (4000, 3000))):
        out = io.BytesIO()
        photo.resize(size, Image.Resampling.LANCZOS).save(out, "JPEG", quality=90)
        images[name] = out.getvalue()
    rgba = photo.resize((800, 600), Image.Resampling.LANCZOS).convert("RGBA")
    alpha = Image.new("L", rgba.size, 0)
    ImageDraw.Draw(alpha).ellipse((40, 30, 760, 570), fill=255)  # a round cut-out: real transparency
    rgba.putalpha(alpha)
    out = io.BytesIO()
    rgba.save(out, "PNG")
    images["png_alpha_800x600"] = out.getvalue()
    frames = [photo.crop((i * 8, i * 6, i * 8 + 480, i * 6 + 360)).quantize(64) for i in range(24)]
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:], duration=80, loop=0)
    images["gif_anim_480x360x24"] = out.getvalue()
    return images


def with_counter(data: bytes, n: int) -> bytes:
    """The same image with `n` written into a comment of its own format."""
    text = b"bench request %d" % n
    if data.startswith(b"\xff\xd8"):
        return data[:2] + b"\xff\xfe" + struct.pack(">H", len(text) + 2) + text + data[2:]
    if data.startswith(b"\x89PNG"):
        chunk = b"tEXt" + b"Comment\0" + text
        packed = struct.pack(">I", len(chunk) - 4) + chunk + struct.pack(">I", zlib.crc32(chunk))
        return data[:33] + packed + data[33:]  # right after IHDR (8 + 25 bytes)
    if data.startswith(b"GIF"):
        return data[:-1] + b"\x21\xfe" + bytes([len(text)]) + text + b"\x00;"
    raise ValueError("unknown format")


def main(port_file: str) -> None:
    images = make_images()

    class Handler(QuietHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            split = urlsplit(self.path)
            data = images.get(split.path.lstrip("/"))
            if data is None:
                self.send_error(404)
                return
            n = int(parse_qs(split.query).get("n", ["0"])[0])
            body = with_counter(data, n)
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    Path(port_file).write_text(str(server.server_address[1]))
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1])
