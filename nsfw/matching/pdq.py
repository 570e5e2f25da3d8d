"""PDQ, ThreatExchange's 256-bit perceptual hash (the one HMA, StopNCII and the industry's hash
exchange use), in NumPy, from a frame the service has already decoded.

The algorithm is the reference's (facebook/ThreatExchange pdq/cpp/hashing/pdqhashing.cpp, as the
`pdqhash` bindings compile it): luma (0.299 R + 0.587 G + 0.114 B, as floats), two passes of
Jarosz's box filter along rows and columns with windows of ceil(side / 128), sampled at 64 x 64
(`decimateFloat`), the image-domain quality metric on those samples, a 16 x 16 DCT of them, and a bit
for each coefficient above their median (Torben's lower median). tests/test_matching.py holds this
to the bindings on every corpus image (equal, or at most 2 bits apart: float sums in another order).

Two things are ours, both for speed on one core, measured against the bindings on the corpus
(bench/matching.py, README):
- Luma is Pillow's `convert("L")` (the same weights, rounded to whole levels, in C) rather than floats
  in NumPy: four times faster, and the hash moves by at most 2 bits on the corpus.
- The filters and the sampling are one linear map per axis, and only 64 x 64 of its outputs are ever
  read: each sample is a weighted sum of the 2 * window - 1 pixels around it (two box passes), so
  the frame is read about once instead of four full-size passes.

Dihedral hashes (the eight flips and quarter turns) come from the DCT's symmetries, as the
reference's `pdqDihedralHash256esFromFloatLuma` does: a mirrored or rotated copy matches without
being hashed eight times.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

MIN_HASHABLE_SIDE = 5  # the reference's MIN_HASHABLE_DIM: smaller frames hash to zeros, quality 0
BITS = 256
HEX_DIGITS = BITS // 4
# The centre crops a decided image is also remembered by (the fraction kept on each axis): PDQ moves
# 34-58 bits at a 2 % crop a side and 76-130 at 5 %, so a re-upload cropped that much matches one of
# these instead (tests/test_matching.py measures both the catch and the false matches).
CROPS = (0.95, 0.9, 0.85)
# The reference's DCT matrix: 16 rows (frequencies 1..16) of 64 columns, in float32.
_DCT = (np.sqrt(2.0 / 64) * np.cos((np.pi / 2.0 / 64) * np.outer(np.arange(1, 17), 2 * np.arange(64) + 1))).astype(
    np.float32
)
_ODD_ROW = (np.arange(16) % 2 == 1)[:, None]
_ODD_COL = (np.arange(16) % 2 == 1)[None, :]


@dataclass(frozen=True)
class Pdq:
    """One frame's hash (256 bits, as the reference's 64-digit hex) and its quality (0..100: how much
    the frame varies; a flat frame's hash says little)."""

    hex: str
    quality: int


@functools.lru_cache(maxsize=256)
def _sampler(length: int) -> tuple[np.ndarray, np.ndarray]:
    """Jarosz's two box passes along one axis, then the reference's decimation, as 64 bands: for
    each of the 64 samples, the `span` positions it reads (64 x span indices) and their weights. A
    sample reads 2 * window - 1 positions, so the map touches each pixel about once (window is
    length / 128)."""
    window = (length + 2 * 64 - 1) // (2 * 64)
    half = (window + 2) // 2  # box1DFloat: position i reads [i - (window - half), i + half)
    reach = 2 * max(window - half, half - 1)  # how far two passes reach from a sample, either side
    span = min(length, 2 * reach + 1)
    picks = ((np.arange(64) + 0.5) * length / 64).astype(np.intp)  # decimateFloat
    start = np.clip(picks - reach, 0, length - span)
    index = start[:, None] + np.arange(span)[None, :]

    def reads(at: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.maximum(0, at - (window - half)), np.minimum(length, at + half)

    # Away from the ends, every sample reads through the same kernel: the box convolved with itself.
    box = np.ones(window) / window
    kernel = np.convolve(box, box)  # from 2 * (window - half) before the sample
    weights = np.zeros((64, span))
    inner = (picks - reach >= 0) & (picks + reach < length)  # no window of its cut by an end
    offset = reach - 2 * (window - half)
    weights[inner, offset : offset + kernel.size] = kernel
    for n in np.flatnonzero(~inner):  # near an end each window is cut short, with its own mean
        low, high = reads(picks[n : n + 1])
        first = ((index[n] >= low) & (index[n] < high)) / (high - low)
        low, high = reads(index[n])
        inside = (index[n][None, :] >= low[:, None]) & (index[n][None, :] < high[:, None])
        weights[n] = (first / (high - low)) @ inside
    return index, weights.astype(np.float32)


def luma(frame: Image.Image) -> np.ndarray:
    """The frame's luma, rows x columns of whole levels (uint8), at full size; alpha ignored (the
    model sees the colour under it too), a grey frame's luma its grey, as the reference's."""
    if frame.mode not in ("RGB", "RGBA", "RGBX", "L", "LA", "P", "PA"):
        frame = frame.convert("RGB")  # 16-bit grey, CMYK, YCbCr: through RGB, as the decoder does
    return np.asarray(frame.convert("L") if frame.mode != "L" else frame)


def dct16(plane: np.ndarray) -> tuple[np.ndarray, int]:
    """A luma plane -> its 16 x 16 DCT coefficients and its quality, as pdqFloat256FromFloatLuma."""
    sampled = _sampled(plane)[0]
    return _DCT @ sampled @ _DCT.T, _quality(sampled)


def _sampled(plane: np.ndarray, flips: bool = False) -> list[np.ndarray]:
    """The 64 x 64 samples the reference takes of a plane (Jarosz's filters, then its decimation);
    with `flips`, also of the plane mirrored, upside down and both, in that order (read backwards,
    the same bands give them: a flipped frame is not sampled at mirrored places, so they differ)."""
    rows, cols = plane.shape
    if rows == 64 and cols == 64:
        grid = plane.astype(np.float32)
        return [grid, grid[:, ::-1], grid[::-1, :], grid[::-1, ::-1]] if flips else [grid]
    # Sample by sample over row bands (views, not copies: a full-size temporary per frame would cost
    # more in fresh pages than the arithmetic), then the columns of the 64 rows that gives.
    index, weights = _sampler(rows)
    bands = [(weights[n], index[n, 0], index[n, -1] + 1) for n in range(64)]
    downs = [np.stack([w @ plane[lo:hi] for w, lo, hi in bands])]
    if flips:  # the plane upside down: each band read from the other end
        downs.append(np.stack([w[::-1] @ plane[rows - hi : rows - lo] for w, lo, hi in bands]))
    index, weights = _sampler(cols)
    grids = []
    for down in downs:
        grids.append(np.einsum("sk,rsk->rs", weights, down[:, index]).astype(np.float32))
        if flips:
            grids.append(np.einsum("sk,rsk->rs", weights, down[:, cols - 1 - index]).astype(np.float32))
    return [grids[0], grids[1], grids[2], grids[3]] if flips else grids


def _quality(sampled: np.ndarray) -> int:
    """The reference's pdqImageDomainQualityMetric: the sum of |neighbour differences| in percent
    of full scale, each truncated to an int, / 90, at most 100."""
    down = np.trunc((sampled[:-1, :] - sampled[1:, :]) * 100 / 255)
    across = np.trunc((sampled[:, :-1] - sampled[:, 1:]) * 100 / 255)
    total = int(np.abs(down).sum() + np.abs(across).sum())
    return min(100, total // 90)


def _bits(coefficients: np.ndarray) -> str:
    """The hash's hex: bit i * 16 + j set where coefficient [i][j] is above the lower median; the
    reference prints the 16 words from the highest, so the hex is the 256-bit number big-endian."""
    flat = coefficients.reshape(-1)
    median = np.partition(flat, 127)[127]
    bits = (flat > median)[::-1]  # bit 255 first
    return np.packbits(bits).tobytes().hex()


def _dihedral(b: np.ndarray) -> list[np.ndarray]:
    """The DCT of the frame's eight dihedral copies, from its own (the reference's
    dct16OriginalTo*): original, rotate 90, 180, 270, flip X, flip Y, flip +1, flip -1."""
    t = b.T
    return [
        b,
        np.where(_ODD_COL, b, -b).T,  # rotate 90: B[j][i] = A[i][j] if j odd else -A[i][j]
        np.where(_ODD_ROW ^ _ODD_COL, -b, b),  # rotate 180
        np.where(_ODD_ROW, b, -b).T,  # rotate 270: B[j][i] = A[i][j] if i odd else -A[i][j]
        np.where(_ODD_ROW, b, -b),  # flip X
        np.where(_ODD_COL, b, -b),  # flip Y
        t,  # flip +1 (transpose)
        np.where(_ODD_ROW ^ _ODD_COL, -b, b).T,  # flip -1
    ]


def hash_plane(plane: np.ndarray) -> Pdq:
    """A luma plane's PDQ."""
    if min(plane.shape) < MIN_HASHABLE_SIDE:
        return Pdq("0" * HEX_DIGITS, 0)
    coefficients, quality = dct16(plane)
    return Pdq(_bits(coefficients), quality)


def dihedral_hashes(plane: np.ndarray) -> list[str]:
    """The eight dihedral hashes of a luma plane (the original first)."""
    if min(plane.shape) < MIN_HASHABLE_SIDE:
        return ["0" * HEX_DIGITS] * 8
    coefficients, _ = dct16(plane)
    return [_bits(b) for b in _dihedral(coefficients)]


def centre_crop(plane: np.ndarray, keep: float) -> np.ndarray:
    """The centre `keep` fraction of a plane on each axis (0.9: 5 % cut off each side)."""
    rows, cols = plane.shape
    cut_rows, cut_cols = round(rows * (1 - keep) / 2), round(cols * (1 - keep) / 2)
    return plane[cut_rows : rows - cut_rows, cut_cols : cols - cut_cols]


@dataclass(frozen=True)
class FrameHashes:
    """What one classified frame is looked up and remembered by: its quality and its hash (the
    original: `dihedral[0]`, all a lookup needs); and, for a frame that may be queued (`full`), the
    hashes of its seven true flips and quarter turns (`dihedral[1:]`, the frame itself turned and
    hashed: PDQ's DCT symmetries are exact only when a side suits its 64-sample grid, and a copy
    flipped upside down can land 26-34 bits from them) and of its centre crops (`crops`, CROPS in
    order). A decision remembers them all, so a copy is matched by its own one hash."""

    quality: int
    dihedral: tuple[str, ...]
    crops: tuple[str, ...] = ()

    @property
    def original(self) -> str:
        return self.dihedral[0]

    @property
    def full(self) -> bool:
        return len(self.dihedral) == len(TURNS) + 1 and len(self.crops) == len(CROPS)

    def to_json(self) -> list[object]:
        return [self.quality, list(self.dihedral), list(self.crops), _FORMAT]

    @classmethod
    def from_json(cls, raw: list[object]) -> FrameHashes:
        """As to_json wrote it; an entry in an earlier shape (its turns PDQ's DCT symmetries, not the
        frame turned) keeps its own hash alone, so it is never taken for a full one."""
        quality, dihedral, crops, *tag = raw
        if tag != [_FORMAT]:
            return cls(int(quality), tuple(dihedral)[:1])  # type: ignore[arg-type]
        return cls(int(quality), tuple(dihedral), tuple(crops))  # type: ignore[arg-type, call-overload]


_FORMAT = "turned"  # FrameHashes' JSON: its turns are the frame's own, turned (a cache entry may be older)


# The seven flips and quarter turns of a plane, as views (no copy): the frame's true dihedral copies.
TURNS = (
    lambda p: np.rot90(p, 1),
    lambda p: np.rot90(p, 2),
    lambda p: np.rot90(p, 3),
    lambda p: p[:, ::-1],  # mirrored
    lambda p: p[::-1, :],  # upside down
    lambda p: p.T,
    lambda p: np.rot90(p, 2).T,
)


def frame_hashes(frame: Image.Image, full: bool = True) -> FrameHashes:
    """A decoded frame's hashes: its own; with `full`, its true turns' and its centre crops' too.

    The turns cost two passes over the frame, not seven: the reference's sampling is the same linear
    map along each axis, so a transposed frame's samples are the samples transposed (exact), and
    only a flipped axis must be sampled again, reading the same bands backwards."""
    plane = luma(frame)
    if min(plane.shape) < MIN_HASHABLE_SIDE:
        zero = "0" * HEX_DIGITS
        return FrameHashes(0, (zero,) * (len(TURNS) + 1 if full else 1), (zero,) * len(CROPS) if full else ())
    grids = _sampled(plane, flips=full)
    quality = _quality(grids[0])
    coefficients = [_DCT @ grid @ _DCT.T for grid in grids]
    if not full:
        return FrameHashes(quality, (_bits(coefficients[0]),))
    original, mirrored, upside_down, half_turn = coefficients
    # In TURNS' order: rot90 = mirrored then transposed, rot180, rot270 = upside down then
    # transposed, mirrored, upside down, transposed, anti-transposed = the half turn transposed.
    turned = (mirrored.T, half_turn, upside_down.T, mirrored, upside_down, original.T, half_turn.T)
    # (Contiguous first: sampling a strided view of a large frame costs twice the copy.)
    crops = tuple(hash_plane(np.ascontiguousarray(centre_crop(plane, keep))).hex for keep in CROPS)
    return FrameHashes(quality, tuple(_bits(b) for b in (original, *turned)), crops)


def hash_frame(frame: Image.Image) -> Pdq:
    """A decoded frame's PDQ."""
    return hash_plane(luma(frame))


def packed(hashes: Sequence[str]) -> np.ndarray:
    """Hashes as four rows of 64-bit words (4 x n): each row one contiguous sweep for a search."""
    raw = np.frombuffer(b"".join(bytes.fromhex(h) for h in hashes), dtype=">u8").reshape(len(hashes), 4)
    return np.ascontiguousarray(raw.astype(np.uint64).T)


def distances(words: np.ndarray, pdq: str) -> np.ndarray:
    """Hamming distance of one hash to each column of `packed` words (uint16)."""
    query = packed([pdq])[:, 0]
    found = np.bitwise_count(words[0] ^ query[0]).astype(np.uint16)
    for row in range(1, 4):
        found += np.bitwise_count(words[row] ^ query[row])
    return found


def nearest_of(words: np.ndarray, pdqs: Sequence[str]) -> np.ndarray:
    """Each column of `packed` words' distance to the nearest of several hashes (257: none given)."""
    best = np.full(words.shape[1], 257, dtype=np.uint16)
    for pdq in pdqs:
        np.minimum(best, distances(words, pdq), out=best)
    return best


def distance(a: str, b: str) -> int:
    """Hamming distance between two hashes in hex."""
    return (int(a, 16) ^ int(b, 16)).bit_count()


def parse(text: str) -> str:
    """A PDQ hash as 64 hex digits, lower case; ValueError otherwise."""
    value = text.strip().lower()
    if len(value) != HEX_DIGITS or any(c not in "0123456789abcdef" for c in value):
        raise ValueError(f"not a PDQ hash (64 hex digits): {text[:80]!r}")
    return value
