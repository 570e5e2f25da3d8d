"""Videos for the tests and the benchmark: clips with a known frame at a known time, and hostile files
of issue 25's list, made here with PyAV's encoders (and, where no encoder would write them, by hand).
None is committed. `python -m scripts.hostile_videos DIR` writes the hostile ones to DIR.

The hostile classes, and what each tries:
- a frame declared 100,000 x 100,000 (Matroska's PixelWidth and PixelHeight; the frames are 64 x 48);
- a 10-hour duration made of two frames, one at the start and one at the end;
- thousands of tiny streams;
- an MP4 whose `stsz` atom says every sample is 2 GB;
- an endless WebM: unknown sizes, no duration (a live stream's), served without an end;
- a valid MP4 header (its `moov` first) followed by garbage instead of its media;
- an H.264 stream with 16 reference frames;
- a ZIP and a PNG named `.mp4`.
"""

from __future__ import annotations

import io
import os
import random
import struct
import sys
import zipfile
from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path

import av
from PIL import Image

os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1's encoder: errors only on stderr

# MP4/MOV or Matroska/WebM with each codec the service reads, and the encoder that writes it here.
ENCODERS = {"h264": "libx264", "hevc": "libx265", "vp8": "libvpx", "vp9": "libvpx-vp9", "av1": "libsvtav1"}
FAST = {
    "libx264": {"preset": "ultrafast"},
    "libx265": {"preset": "ultrafast", "x265-params": "log-level=none"},
    "libvpx": {"deadline": "realtime", "cpu-used": "8"},
    "libvpx-vp9": {"deadline": "realtime", "cpu-used": "8"},
    "libsvtav1": {"preset": "12"},
}


def clip(
    frame_at: Callable[[float], Image.Image],
    *,
    seconds: float,
    fps: int = 4,
    codec: str = "h264",
    container: str = "mp4",
    size: tuple[int, int] = (160, 120),
    gop: int | None = None,
    options: dict[str, str] | None = None,
) -> bytes:
    """A clip of `seconds` at `fps`, each frame frame_at(its time), encoded by `codec` in `container`
    (mp4, mov, webm, matroska), a keyframe every `gop` frames (default: every second)."""
    encoder = ENCODERS.get(codec, codec)
    out = io.BytesIO()
    with av.open(out, "w", format=container) as muxer:
        stream = muxer.add_stream(encoder, rate=fps, options={**FAST.get(encoder, {}), **(options or {})})
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = gop or fps
        for i in range(round(seconds * fps)):
            image = frame_at(i / fps).convert("RGB").resize(size)
            for packet in stream.encode(av.VideoFrame.from_image(image)):
                muxer.mux(packet)
        for packet in stream.encode():
            muxer.mux(packet)
    return out.getvalue()


def marked_clip(
    ordinary: Image.Image, marked: Image.Image, at: tuple[float, float], *, seconds: float = 8.0, **options: object
) -> bytes:
    """`ordinary` throughout, but `marked` from at[0] to at[1] seconds."""
    return clip(lambda t: marked if at[0] <= t < at[1] else ordinary, seconds=seconds, **options)  # type: ignore[arg-type]


def _grey(t: float) -> Image.Image:
    return Image.new("RGB", (64, 48), (int(t * 7) % 256, 128, 128))


# Matroska, by hand: an element is its ID, its size as an EBML variable-length integer, its payload.


def _vint(size: int) -> bytes:
    for length in range(1, 9):
        if size < (1 << (7 * length)) - 1:
            return (size | (1 << (7 * length))).to_bytes(length, "big")
    raise ValueError(size)


def _element(ident: int, payload: bytes) -> bytes:
    return ident.to_bytes((ident.bit_length() + 7) // 8, "big") + _vint(len(payload)) + payload


def _uint(ident: int, value: int) -> bytes:
    return _element(ident, value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big"))


def _vp8_frames(count: int = 2) -> list[bytes]:
    """Packets of a real 64 x 48 VP8 stream, a keyframe each."""
    data = clip(_grey, seconds=count, fps=1, codec="vp8", container="webm", size=(64, 48), gop=1)
    with av.open(io.BytesIO(data)) as demuxer:
        return [bytes(packet) for packet in demuxer.demux(video=0) if packet.size]


def vp8_packets(images: Sequence[Image.Image], size: tuple[int, int] = (160, 120)) -> list[bytes]:
    """One VP8 keyframe packet of each image."""
    frames = list(images)
    data = clip(lambda t: frames[min(int(t), len(frames) - 1)], seconds=len(frames), fps=1, codec="vp8",
                container="webm", size=size, gop=1)  # fmt: skip
    with av.open(io.BytesIO(data)) as demuxer:
        return [bytes(packet) for packet in demuxer.demux(video=0) if packet.size]


def matroska(
    width: int,
    height: int,
    frames: Sequence[bytes],
    *,
    tracks: int = 1,
    duration_ms: float | None,
    spacing_ms: int = 1000,
    laced: bool = False,
) -> bytes:
    """A WebM of VP8 `frames` in track 1 (spacing_ms apart: 0 puts them all at one time), declaring
    width x height, with `tracks` video tracks in all; no duration when duration_ms is None; with
    `laced`, every frame in one Xiph-laced block (FFmpeg gives all but the first no timestamp)."""
    header = _element(
        0x1A45DFA3,
        _uint(0x4286, 1) + _uint(0x42F7, 1) + _uint(0x42F2, 4) + _uint(0x42F3, 8) + _element(0x4282, b"webm")
        + _uint(0x4287, 2) + _uint(0x4285, 2),
    )  # fmt: skip
    info = _uint(0x2AD7B1, 1_000_000) + _element(0x4D80, b"hostile") + _element(0x5741, b"hostile")
    if duration_ms is not None:
        info += _element(0x4489, struct.pack(">d", duration_ms))
    entries = b"".join(
        _element(
            0xAE,
            _uint(0xD7, number) + _uint(0x73C5, number) + _uint(0x83, 1) + _element(0x86, b"V_VP8")
            + _element(0xE0, _uint(0xB0, width) + _uint(0xBA, height)),
        )
        for number in range(1, tracks + 1)
    )  # fmt: skip
    if laced:
        sizes = b"".join(b"\xff" * (len(frame) // 255) + bytes([len(frame) % 255]) for frame in frames[:-1])
        block = b"\x81\x00\x00\x82" + bytes([len(frames) - 1]) + sizes + b"".join(frames)
        clusters = _element(0x1F43B675, _uint(0xE7, 0) + _element(0xA3, block))
    else:
        clusters = b"".join(
            _element(0x1F43B675, _uint(0xE7, i * spacing_ms) + _element(0xA3, b"\x81\x00\x00\x80" + frame))
            for i, frame in enumerate(frames)
        )
    return header + _element(0x18538067, _element(0x1549A966, info) + _element(0x1654AE6B, entries) + clusters)


def declared_huge_frame() -> bytes:
    """A WebM whose track declares 100,000 x 100,000 pixels; its frames are 64 x 48."""
    return matroska(100_000, 100_000, _vp8_frames(), duration_ms=2000.0)


def lying_duration(frames: Sequence[bytes], duration_ms: float = 1.0) -> bytes:
    """A WebM of frames a second apart whose Duration says `duration_ms` (1 ms for 8 s)."""
    return matroska(160, 120, frames, duration_ms=duration_ms)


def laced_without_timestamps(frames: Sequence[bytes]) -> bytes:
    """Every frame in one laced block, no duration: FFmpeg gives the first a timestamp, no other one."""
    return matroska(160, 120, frames, duration_ms=None, laced=True)


def keyframes_at_one_time(count: int = 1000, size: tuple[int, int] = (640, 480)) -> bytes:
    """`count` copies of one keyframe, all at time 0, no duration: a decoder kept busy on one instant."""
    frame = vp8_packets([_grey(3).resize(size)], size)[0]
    return matroska(size[0], size[1], [frame] * count, duration_ms=None, spacing_ms=0)


def many_streams(count: int = 2000) -> bytes:
    """A WebM of `count` video tracks (one of them with frames)."""
    return matroska(64, 48, _vp8_frames(), tracks=count, duration_ms=2000.0)


def ten_hours_of_one_frame() -> bytes:
    """An MP4 of two keyframes, at 0 s and at 10 h: a long duration in a few KB."""
    out = io.BytesIO()
    with av.open(out, "w", format="mp4") as muxer:
        stream = muxer.add_stream("libx264", rate=1, options=FAST["libx264"])
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1)
        for pts in (0, 36_000):
            frame = av.VideoFrame.from_image(_grey(pts))
            frame.pts, frame.time_base = pts, Fraction(1, 1)
            frame.pict_type = av.video.frame.PictureType.I
            for packet in stream.encode(frame):
                muxer.mux(packet)
        for packet in stream.encode():
            muxer.mux(packet)
    return out.getvalue()


def _boxes(data: bytes, start: int = 0, end: int | None = None) -> list[tuple[bytes, int, int]]:
    """(type, offset, size) of each ISO-BMFF box in data[start:end]."""
    found, offset, end = [], start, len(data) if end is None else end
    while offset + 8 <= end:
        size, kind = struct.unpack(">I4s", data[offset : offset + 8])
        if size < 8:
            break
        found.append((kind, offset, size))
        offset += size
    return found


def _find(data: bytes, path: Sequence[bytes]) -> tuple[int, int]:
    """Offset and size of the box at path (moov/trak/mdia/minf/stbl/stsz)."""
    start, end = 0, len(data)
    for kind in path:
        match = next((b for b in _boxes(data, start, end) if b[0] == kind), None)
        if match is None:
            raise ValueError(f"no {kind!r}")
        _, offset, size = match
        start, end = offset + 8, offset + size
    return start - 8, end - start + 8


STBL = (b"moov", b"trak", b"mdia", b"minf", b"stbl")


def moov_that_lies() -> bytes:
    """An MP4 whose sample size table says every sample is 2 GB (the file is a few KB)."""
    data = bytearray(clip(_grey, seconds=3, fps=4, size=(64, 48)))
    offset, size = _find(bytes(data), (*STBL, b"stsz"))
    _, count = struct.unpack(">II", data[offset + 12 : offset + 20])
    for i in range(count):
        struct.pack_into(">I", data, offset + 20 + 4 * i, 0x7FFFFFFF)
    return bytes(data)


def header_then_garbage() -> bytes:
    """A valid MP4's ftyp and moov (moved first), then random bytes where its media was."""
    data = clip(_grey, seconds=3, fps=4, size=(64, 48), options={"movflags": "faststart"})
    moov_offset, moov_size = _find(data, (b"moov",))
    head = data[: moov_offset + moov_size]
    return head + random.Random(25).randbytes(len(data) - len(head))  # the same garbage every time


def many_reference_frames() -> bytes:
    """H.264 with 16 reference frames (x264's most), B-frames and no scene cuts: the decoder keeps
    16 frames around."""
    return clip(
        _grey, seconds=4, fps=8, size=(320, 240), gop=32,
        options={"x264-params": "ref=16:bframes=8:scenecut=0:level=5.1", "preset": "veryslow"},
    )  # fmt: skip


def live_webm(seconds: int = 4) -> bytes:
    """A WebM as a live stream writes it: unknown segment and cluster sizes, no duration, no cues."""
    out = io.BytesIO()
    with av.open(out, "w", format="webm", options={"live": "1"}) as muxer:
        stream = muxer.add_stream("libvpx", rate=2, options=FAST["libvpx"])
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.gop_size = 2
        for i in range(seconds * 2):
            for packet in stream.encode(av.VideoFrame.from_image(_grey(i))):
                muxer.mux(packet)
        for packet in stream.encode():
            muxer.mux(packet)
    return out.getvalue()


def zip_named_mp4() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("video.mp4", b"\x00" * 1000)
    return out.getvalue()


def png_named_mp4() -> bytes:
    out = io.BytesIO()
    _grey(1).save(out, "PNG")
    return out.getvalue()


HOSTILE: dict[str, Callable[[], bytes]] = {
    "declared_huge_frame.webm": declared_huge_frame,
    "ten_hours_of_one_frame.mp4": ten_hours_of_one_frame,
    "many_streams.webm": many_streams,
    "moov_that_lies.mp4": moov_that_lies,
    "live.webm": live_webm,
    "header_then_garbage.mp4": header_then_garbage,
    "many_reference_frames.mp4": many_reference_frames,
    "keyframes_at_one_time.webm": keyframes_at_one_time,
    "zip.mp4": zip_named_mp4,
    "png.mp4": png_named_mp4,
}


def main(argv: list[str]) -> int:
    folder = Path(argv[0] if argv else ".")
    folder.mkdir(parents=True, exist_ok=True)
    for name, make in HOSTILE.items():
        data = make()
        (folder / name).write_bytes(data)
        print(f"{name}: {len(data)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
