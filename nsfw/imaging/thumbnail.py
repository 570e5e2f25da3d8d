"""The review queue's picture: a decoded frame -> a small JPEG, made from the decoded pixels, never
the original bytes."""

from __future__ import annotations

import io
from typing import IO

from PIL import Image

from nsfw.imaging.budget import Limits
from nsfw.imaging.decode import Frames, decode_frames, to_rgb

THUMBNAIL_SIDE = 256


def picture(frame: Image.Image, side: int = THUMBNAIL_SIDE) -> bytes:
    """One decoded frame -> a JPEG of longest side `side` (smaller images keep their size)."""
    scale = side / max(frame.size)
    size = (max(1, round(frame.width * scale)), max(1, round(frame.height * scale))) if scale < 1 else frame.size
    # Resized first (a small new image, never a full-size copy), then made RGB for JPEG.
    small = frame.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0) if size != frame.size else frame
    out = io.BytesIO()
    to_rgb(small).save(out, "JPEG", quality=80, optimize=True)
    return out.getvalue()


def thumbnail_jpeg(
    fp: IO[bytes], *, limits: Limits, deadline: float | None = None, side: int = THUMBNAIL_SIDE
) -> bytes:
    """The first frame as a JPEG of longest side `side` (smaller images keep their size): the review
    queue's picture, made from the decoded image, never the original bytes."""
    frames = decode_frames(fp, limits=limits, deadline=deadline, convert=lambda frame: picture(frame, side))
    return frames.images[0]


def frame_thumbnails(
    fp: IO[bytes], *, limits: Limits, max_frames: int, deadline: float | None = None, side: int = THUMBNAIL_SIDE
) -> Frames[bytes]:
    """Each frame the model classifies (the same frames, picked the same way, as preprocess_frames
    with the same limits and max_frames) as a JPEG of longest side `side`: what the moderator sees of
    an animation, frame by frame."""
    return decode_frames(
        fp, limits=limits, max_frames=max_frames, deadline=deadline, convert=lambda frame: picture(frame, side)
    )
