"""Video: which bytes are one (sniffed, never the name or the header), and its sampled frames, decoded
by FFmpeg's libraries (PyAV) in a child process (nsfw/imaging/videochild.py).

FFmpeg is a large attack surface, so a worker never loads it: each video is decoded by a child that
limits itself first (address space NSFW_VIDEO_MEMORY_BYTES, CPU seconds, no file writes), opens only
the file it is given with the one demuxer the bytes were sniffed as, allows only the decoders named
here, and runs on one thread. The parent reads its frames one at a time under NSFW_VIDEO_TIMEOUT and
kills it when it has seen enough, when the deadline passes, or when it answers anything but the
protocol: a crash, a hang or a bomb in a decoder costs one child, never a worker. A child that dies
after some frames leaves those frames (a video that is cut short still has a verdict).
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from PIL import Image

from nsfw.errors import (
    DeadlineExceeded,
    ImageTooManyPixels,
    InvalidVideo,
    NsfwError,
    SpoolUnavailable,
    UnsupportedMediaType,
    VideoTooComplex,
    VideoTooLong,
)

log = logging.getLogger(__name__)

# The containers read, by the demuxer each is opened with (never probed), and the codecs decoded.
MP4, MATROSKA = "mp4", "matroska"
CODECS = ("h264", "hevc", "av1", "vp8", "vp9")
# FFmpeg's decoders for them (codec_whitelist): the native ones, and the library builds the wheel has.
DECODERS = ("h264", "hevc", "av1", "libdav1d", "vp8", "vp9", "libvpx", "libvpx-vp9")
ACCEPTED = "MP4/MOV or WebM/MKV with H.264, H.265, AV1, VP8 or VP9"
# Frames come back no larger than this on their longest side (the model sees 224 or 299; the review's
# pictures 256): a 4K frame costs the pipe 3 MB, not 25.
FRAME_SIDE = 1024
MAX_STREAMS = 16
# HEIF and AVIF still images are ISO-BMFF too: their brands are images, not videos.
_IMAGE_BRANDS = {b"avif", b"avis", b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"}
_QUICKTIME_BOXES = {b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"}
_CHILD = Path(__file__).with_name("videochild.py")
_ERRORS: dict[str, type[NsfwError]] = {
    "unsupported_media_type": UnsupportedMediaType,
    "image_too_many_pixels": ImageTooManyPixels,
    "video_too_long": VideoTooLong,
    "video_too_complex": VideoTooComplex,
    "invalid_video": InvalidVideo,
}


def sniff(head: bytes) -> str | None:
    """The demuxer for these first bytes (at least 12), or None when they are not a video we read."""
    if head[:4] == b"\x1a\x45\xdf\xa3":  # EBML: Matroska and WebM
        return MATROSKA
    if head[4:8] == b"ftyp":
        return None if head[8:12] in _IMAGE_BRANDS else MP4
    if head[4:8] in _QUICKTIME_BOXES:  # QuickTime files older than ftyp
        return MP4
    return None


def other_video(head: bytes) -> str | None:
    """The name of a video container the service does not read, from its first bytes (a 415)."""
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "AVI"
    for magic, name in _OTHER_MAGIC:
        if head.startswith(magic):
            return name
    return None


_OTHER_MAGIC = (
    (b"FLV\x01", "FLV"),
    (b"OggS", "Ogg"),
    (b"\x00\x00\x01\xba", "MPEG program stream"),
    (b"\x30\x26\xb2\x75\x8e\x66\xcf\x11", "ASF/WMV"),
)


def is_video(body: IO[bytes]) -> str | None:
    """The demuxer of a video we read (None for anything else); a 415 for a video we do not."""
    body.seek(0)
    head = body.read(16)
    body.seek(0)
    other = other_video(head)
    if other is not None:
        raise UnsupportedMediaType(f"{other}; accepted: {ACCEPTED}")
    return sniff(head)


@dataclass(frozen=True)
class VideoLimits:
    frames: int = 16
    max_pixels: int = 3840 * 2160
    max_seconds: float = 3600.0
    timeout: float = 20.0
    memory_bytes: int = 1 << 30
    max_streams: int = MAX_STREAMS


@dataclass(frozen=True)
class VideoInfo:
    duration_s: float | None
    width: int
    height: int
    codec: str

    def to_dict(self) -> dict[str, Any]:
        duration = None if self.duration_s is None else round(self.duration_s, 3)
        return {"duration_s": duration, "width": self.width, "height": self.height, "codec": self.codec}


@dataclass(frozen=True)
class VideoFrame:
    time_s: float | None
    image: Image.Image


class VideoDecode:
    """One child decoding one video: `info` first, then `frames()`, one at a time; `close()` (or the
    end of a with block) kills it if it still runs and removes what it was given."""

    def __init__(self, body: IO[bytes], demuxer: str, limits: VideoLimits, deadline: float) -> None:
        self.limits = limits
        self.deadline = deadline
        self._buffer = bytearray()
        self._copy: str | None = None
        self.complete = False  # the child said it sampled the whole video
        self._process: subprocess.Popen[bytes] | None = None
        self._selector = selectors.DefaultSelector()
        try:
            job = {
                "path": self._path_of(body),
                "format": demuxer,
                "decoders": DECODERS,
                "codecs": CODECS,
                "max_streams": limits.max_streams,
                "max_pixels": limits.max_pixels,
                "max_seconds": limits.max_seconds,
                "frames": limits.frames,
                "side": FRAME_SIDE,
                "memory_bytes": limits.memory_bytes,
                # CPU seconds: the wall deadline, rounded up; the parent's deadline ends it first.
                "cpu_seconds": max(1, int(limits.timeout) + 1),
            }
            self._process = subprocess.Popen(  # noqa: S603 - our own script, our own interpreter
                [sys.executable, "-I", str(_CHILD), json.dumps(job)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                close_fds=True,
                start_new_session=True,  # a signal for the worker's group never reaches it
            )
            assert self._process.stdout is not None
            os.set_blocking(self._process.stdout.fileno(), False)
            self._selector.register(self._process.stdout, selectors.EVENT_READ)
            self.info = self._read_info()
        except BaseException:
            self.close()
            raise

    def _path_of(self, body: IO[bytes]) -> str:
        """A path the child can open: a copy in a private temporary file (removed by close). A full
        or unwritable temporary folder is the service's failure: 503, never a 500."""
        try:
            handle, self._copy = tempfile.mkstemp(prefix=COPY_PREFIX, suffix=".bin")
            with os.fdopen(handle, "wb") as copy:
                body.seek(0)
                while chunk := body.read(1 << 20):
                    copy.write(chunk)
        except OSError as exc:
            raise SpoolUnavailable(f"no room for the video's copy: {exc}") from None
        finally:
            body.seek(0)
        return self._copy

    def _read_info(self) -> VideoInfo:
        message = self._message()
        if message is None or "info" not in message:
            raise self._failure(message)
        info = message["info"]
        return VideoInfo(info["duration_s"], int(info["width"]), int(info["height"]), str(info["codec"]))

    def frames(self) -> Iterator[VideoFrame]:
        """The sampled frames, in time order, until the child ends, fails or the deadline passes.
        After at least one frame, a failure ends the frames (logged); before any, it is raised."""
        count = 0
        while True:
            try:
                message = self._message()
                if message is not None and "end" in message:
                    self.complete = not message.get("partial")  # the child left samples unjudged
                    return
                if message is None:  # the child ended without saying so: cut short
                    raise InvalidVideo("the decoder ended before its last frame")
                if "frame" not in message:
                    raise self._failure(message)
                head = message["frame"]
                width, height = int(head["width"]), int(head["height"])
                if not (0 < width <= FRAME_SIDE and 0 < height <= FRAME_SIDE):
                    raise InvalidVideo(f"the decoder said a frame of {width}x{height}")
                pixels = self._exact(width * height * 3)
            except NsfwError as error:
                if count == 0:
                    raise
                log.info("video cut short after %d frames: %s %s", count, error.code, error.detail)
                return
            count += 1
            time_s = head.get("time_s")
            yield VideoFrame(None if time_s is None else float(time_s), Image.frombytes("RGB", (width, height), pixels))

    def _failure(self, message: dict[str, Any] | None) -> NsfwError:
        if message is not None and message.get("error") in _ERRORS:
            error = _ERRORS[message["error"]](str(message.get("detail", ""))[:300])
            if isinstance(error, UnsupportedMediaType):
                error.detail = f"{error.detail}; accepted: {ACCEPTED}"
            return error
        self.close()
        code = self._process.returncode if self._process is not None else None
        return InvalidVideo(f"the decoder ended ({code}) without an answer" if message is None else "bad answer")

    def _message(self) -> dict[str, Any] | None:
        """The next JSON line, or None when the child closed its output (it ended or died)."""
        while b"\n" not in self._buffer:
            if len(self._buffer) > 4096:
                raise InvalidVideo("the decoder's line is too long")
            if not self._fill():
                return None
        line, _, rest = bytes(self._buffer).partition(b"\n")
        self._buffer = bytearray(rest)
        try:
            message = json.loads(line)
        except ValueError:
            raise InvalidVideo("the decoder's line is not JSON") from None
        if not isinstance(message, dict):
            raise InvalidVideo("the decoder's line is not an object")
        return message

    def _exact(self, size: int) -> bytes:
        while len(self._buffer) < size:
            if not self._fill():
                raise InvalidVideo("the decoder ended within a frame")
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def _fill(self) -> bool:
        """More of the child's output, waiting until the deadline; False at its end."""
        left = self.deadline - time.monotonic()
        if left <= 0 or not self._selector.select(left):
            self.close()
            raise DeadlineExceeded(f"the video's decode passed {self.limits.timeout} s")
        assert self._process is not None and self._process.stdout is not None
        chunk = self._process.stdout.read(1 << 20)
        if chunk is None:  # woken with nothing to read yet
            return True
        if not chunk:
            return False
        self._buffer += chunk
        return True

    def close(self) -> None:
        """Kill the child if it still runs, reap it, and remove the copy it was given."""
        if self._process is not None:
            if self._process.poll() is None:
                self._process.kill()
            self._process.wait()
            if self._process.stdout is not None and not self._process.stdout.closed:
                self._process.stdout.close()
        self._selector.close()
        if self._copy is not None:
            Path(self._copy).unlink(missing_ok=True)
            self._copy = None

    def __enter__(self) -> VideoDecode:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


COPY_PREFIX = "nsfw-video-"


def sweep_copies(older_than: float = 600.0) -> int:
    """Remove copies a killed worker left before its child opened them (the child removes its copy as
    soon as it has it open); at a worker's start. Returns how many."""
    folder = Path(tempfile.gettempdir())
    swept = 0
    for path in folder.glob(f"{COPY_PREFIX}*"):
        try:
            if time.time() - path.stat().st_mtime > older_than:
                path.unlink()
                swept += 1
        except OSError:
            continue
    return swept


def open_video(body: IO[bytes], demuxer: str, limits: VideoLimits) -> VideoDecode:
    """A child decoding body's sampled frames, its container's facts read (VideoDecode.info); raises
    the video's own error (415, 422) when the container refuses it before any frame."""
    return VideoDecode(body, demuxer, limits, time.monotonic() + limits.timeout)
