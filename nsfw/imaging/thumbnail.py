"""The review queue's pictures: a decoded frame -> a small JPEG (the queue's thumbnail) and a larger one
(the preview a moderator opens full-size), made from the decoded pixels, never the original bytes."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import IO

from PIL import Image

from nsfw.imaging.budget import Limits
from nsfw.imaging.decode import Frames, decode_frames, to_rgb

THUMBNAIL_SIDE = 256
PREVIEW_SIDE = 1280  # NSFW_REVIEW_PREVIEW_PX's default


@dataclass(frozen=True)
class Picture:
    """One classified frame as the moderator sees it: its thumbnail, its preview and the frame's own
    size in pixels (the pictures are smaller)."""

    thumbnail: bytes
    preview: bytes
    width: int
    height: int


def pictures(frame: Image.Image, preview_side: int = PREVIEW_SIDE) -> Picture:
    """One decoded frame -> its thumbnail and its preview. The preview is resized from the frame
    (never from the thumbnail: a 4000 px photo's caption must stay readable), the thumbnail from the
    preview when the preview is smaller than the frame (the same look, a fraction of the work).
    Every detailed request that may be queued pays this inside its decode, so the preview takes the
    cheaper road: a box reduction by a whole factor before the bilinear step (reducing_gap 1.0, a
    third of 2.0's time on a 12 MP photo) and no second Huffman pass (`./scripts/bench pictures`)."""
    preview = _scaled(frame, preview_side, reducing_gap=1.0)
    small = _scaled(preview, THUMBNAIL_SIDE)
    return Picture(_jpeg(small), _jpeg(preview, optimize=False), frame.width, frame.height)


def picture(frame: Image.Image, side: int = THUMBNAIL_SIDE) -> bytes:
    """One decoded frame -> a JPEG of longest side `side` (smaller images keep their size)."""
    return _jpeg(_scaled(frame, side))


def _scaled(frame: Image.Image, side: int, reducing_gap: float = 2.0) -> Image.Image:
    """The frame with its longest side at most `side` (a small new image, never a full-size copy)."""
    scale = side / max(frame.size)
    if scale >= 1:
        return frame
    size = (max(1, round(frame.width * scale)), max(1, round(frame.height * scale)))
    return frame.resize(size, Image.Resampling.BILINEAR, reducing_gap=reducing_gap)


def _jpeg(frame: Image.Image, optimize: bool = True) -> bytes:
    out = io.BytesIO()
    to_rgb(frame).save(out, "JPEG", quality=80, optimize=optimize)
    return out.getvalue()


def thumbnail_jpeg(
    fp: IO[bytes], *, limits: Limits, deadline: float | None = None, side: int = THUMBNAIL_SIDE
) -> bytes:
    """The first frame as a JPEG of longest side `side` (smaller images keep their size): the review
    queue's picture, made from the decoded image, never the original bytes."""
    frames = decode_frames(fp, limits=limits, deadline=deadline, convert=lambda frame: picture(frame, side))
    return frames.images[0]


def frame_thumbnails(
    fp: IO[bytes],
    *,
    limits: Limits,
    max_frames: int,
    deadline: float | None = None,
    preview_side: int = PREVIEW_SIDE,
) -> Frames[Picture]:
    """Each frame the model classifies (the same frames, picked the same way, as preprocess_frames
    with the same limits and max_frames) as its pictures: what the moderator sees of an animation,
    frame by frame."""
    return decode_frames(
        fp, limits=limits, max_frames=max_frames, deadline=deadline, convert=lambda frame: pictures(frame, preview_side)
    )
