"""The video decoder's child process: run as a script by nsfw/imaging/video.py, never imported by the
service (it would import FFmpeg's libraries into a worker).

It limits itself before it reads a byte of the file (address space, CPU seconds, no file writes, no
core dump, few open files), opens the file with one demuxer named by the parent (FFmpeg reads only
this file: protocol_whitelist=file; codec_whitelist the allowed decoders), checks what the container
declares (streams, codec, size, duration), then decodes one keyframe near each of the sample times,
by seeking, on one thread, and writes each as raw RGB to stdout:

    {"info": {"duration_s", "width", "height", "codec", "format"}}\\n
    {"frame": {"time_s", "width", "height"}}\\n<width * height * 3 bytes>   (one per sample)
    {"end": true}\\n    or    {"error": "<code>", "detail": "..."}\\n

A frame larger than the container said is refused as it is met (the container may lie). The parent
reads one frame at a time, classifies it, and kills this process when it has seen enough, when the
deadline passes, or when it writes anything else.
"""

from __future__ import annotations

import json
import os
import resource
import sys
from typing import Any


def _limit(memory_bytes: int, cpu_seconds: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))  # writes no file
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (32, 32))


def _say(out: Any, message: dict[str, Any], payload: bytes = b"") -> None:
    out.write(json.dumps(message, separators=(",", ":")).encode() + b"\n" + payload)
    out.flush()


class Refused(Exception):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code


def _fit(width: int, height: int, side: int) -> tuple[int, int]:
    scale = min(1.0, side / max(width, height))
    return max(2, round(width * scale) // 2 * 2), max(2, round(height * scale) // 2 * 2)


def sample_times(duration: float, count: int) -> list[float]:
    """count times spread over the duration: the middle of each of count equal parts."""
    return [duration * (i + 0.5) / count for i in range(count)]


def run(job: dict[str, Any], out: Any) -> None:
    try:
        import av  # after the limits: FFmpeg's libraries load under them
    except ImportError as exc:  # a library that cannot be mapped within RLIMIT_AS is out of memory
        if "map segment" in str(exc) or "memory" in str(exc).lower():
            raise Refused("video_too_complex", f"the decoder's memory limit: {exc}") from None
        raise

    av.logging.set_level(av.logging.PANIC)  # FFmpeg's own lines would go to stderr, unbounded
    container = _open(av, job)
    try:
        stream, info = _checked(av, container, job)
        duration = info["duration_s"]
        if duration is not None and not _duration_holds(container, stream, duration):
            # The container lied about its length: read it as a stream, from its start. Opened again:
            # the check read on from the end it said, and a seek to 0 in a file without cues may land
            # on its last cluster at time 0.
            container.close()
            container = _open(av, job)
            stream, info = _checked(av, container, job)
            duration = info["duration_s"] = None
        # Open, the copy needs no name: gone from the folder now, it is freed when this process ends,
        # however it ends (its worker killed too: this process dies on its broken pipe).
        os.unlink(job["path"])
        _say(out, {"info": info})
        sampler = _Sampler(out, stream, job)
        if duration and duration > 0:
            sampler.by_seeking(container, duration)
        else:
            sampler.as_stream(container)
    finally:
        container.close()
    _say(out, {"end": True, "partial": sampler.partial})


def _open(av: Any, job: dict[str, Any]) -> Any:
    """The file, with the one demuxer named (never probed), only the file protocol, only the allowed
    decoders; the decoders FFmpeg opens to probe the streams refuse a frame past the limit themselves."""
    return av.open(
        job["path"],
        format=job["format"],
        container_options={
            "protocol_whitelist": "file",
            "codec_whitelist": ",".join(job["decoders"]),
            "probesize": "5000000",
            "analyzeduration": "5000000",
        },
        stream_options=[{"max_pixels": str(job["max_pixels"]), "threads": "1"}],
        metadata_errors="ignore",
    )


def _checked(av: Any, container: Any, job: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The video stream, its decoder set up (one thread, max_pixels), and the container's facts,
    after what the container declares was checked against the limits."""
    if len(container.streams) > job["max_streams"]:
        raise Refused("video_too_complex", f"{len(container.streams)} streams")
    if not container.streams.video:
        raise Refused("invalid_video", "no video stream")
    stream = container.streams.video[0]
    context = stream.codec_context
    codec = context.codec.canonical_name  # the format (av1), not the decoder FFmpeg chose (libdav1d)
    if codec not in job["codecs"]:
        raise Refused("unsupported_media_type", f"codec {codec}")
    width, height = context.width or 0, context.height or 0
    if width * height > job["max_pixels"]:
        raise Refused("image_too_many_pixels", f"declared {width}x{height}")
    duration = None
    if stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        duration = container.duration / av.time_base
    if duration is not None and duration > job["max_seconds"]:
        raise Refused("video_too_long", f"{duration:.1f} s")
    context.thread_count = 1
    # The decoder refuses a frame past the limit as it allocates it (avcodec's max_pixels), before
    # _send's check of what it made: a container may declare a small size and carry a huge one.
    context.options = {"max_pixels": str(job["max_pixels"])}
    info = {"duration_s": duration, "width": width, "height": height, "codec": codec, "format": job["format"]}
    return stream, info


def _time(frame: Any, stream: Any) -> float | None:
    return float(frame.pts * stream.time_base) if frame.pts is not None and stream.time_base else None


def _duration_holds(container: Any, stream: Any, duration: float) -> bool:
    """Whether the video ends where its container says: no packet well past the declared duration
    in the packets after a seek to it (a container that says 1 ms for 8 s would have its samples all
    taken from the first frame)."""
    if stream.time_base is None:
        return False
    container.seek(int(duration / stream.time_base), stream=stream, backward=True, any_frame=False)
    slack = max(1.0, duration * 0.05)
    last = None
    for count, packet in enumerate(container.demux(stream)):
        if packet.pts is not None:
            last = float(packet.pts * stream.time_base)
            if last > duration + slack:
                return False  # it goes on well past its end
        if count >= HOLDS_PACKETS:
            return True  # still going near its end
    # The file ended: near where it said? (3500 s said for 8 s had every sample seek to its last keyframe.)
    return last is not None and last >= duration - slack


# Keyframes a stream without a trusted duration may make the child read, at most (each decoded).
STREAM_KEYFRAMES = 2000
# Packets read from a seek to the declared end to see whether the video ends there (demuxed, not decoded).
HOLDS_PACKETS = 5000
# Frames the second pass may decode (it decodes every frame from a sparse keyframe on); past them the
# decode ends, said to be partial.
SECOND_PASS_FRAMES = 3000


class _Sampler:
    """Sends the sampled frames: never two of one frame, none past NSFW_MAX_VIDEO_SECONDS."""

    def __init__(self, out: Any, stream: Any, job: dict[str, Any]) -> None:
        self.out, self.stream, self.job = out, stream, job
        self.sent: set[object] = set()
        self.count = 0
        self.partial = False  # samples left unjudged: the answer says so

    def send(self, frame: Any, identity: object) -> None:
        if identity in self.sent or self.count >= self.job["frames"]:
            return
        self.sent.add(identity)
        self.count += 1
        _send(self.out, frame, self.stream, self.job)

    def _too_late(self, time_s: float | None) -> bool:
        return time_s is not None and time_s > self.job["max_seconds"]

    def by_seeking(self, container: Any, duration: float) -> None:
        """At each sample time, the keyframe before it (keyframes only: one decode a sample). Where
        that keyframe is more than a sample's spacing before its time (keyframes are sparse: one for
        the whole video, an intra-refresh stream), a second pass decodes every frame from there on
        and takes the first frame at each such time, so content after the last keyframe is judged too."""
        stream, context = self.stream, self.stream.codec_context
        times = sample_times(duration, self.job["frames"])
        spacing = duration / len(times)
        uncovered: list[float] = []
        context.skip_frame = "NONKEY"
        for target in times:
            container.seek(int(target / stream.time_base), stream=stream, backward=True, any_frame=False)
            frame = next(_frames(container, stream), None)
            if frame is None:
                uncovered.append(target)
                continue
            time_s = _time(frame, stream)
            if self._too_late(time_s):
                break
            if time_s is None or target - time_s > spacing:
                uncovered.append(target)
            self.send(frame, ("pts", frame.pts) if frame.pts is not None else ("at", target))
        if not uncovered:
            return
        context.skip_frame = "DEFAULT"
        container.seek(int(uncovered[0] / stream.time_base), stream=stream, backward=True, any_frame=False)
        for decoded, frame in enumerate(_frames(container, stream)):
            time_s = _time(frame, stream)
            if decoded >= SECOND_PASS_FRAMES or self._too_late(time_s):
                break
            if time_s is None:
                continue
            if time_s >= uncovered[0] - spacing / 2:
                self.send(frame, ("pts", frame.pts))
                uncovered = [target for target in uncovered if target - spacing / 2 > time_s]
            if not uncovered or self.count >= self.job["frames"]:
                break
        self.partial = bool(uncovered) and self.count < self.job["frames"]

    def as_stream(self, container: Any) -> None:
        """No duration to trust (a live stream's WebM, or a container that lied): keyframes in file
        order, those at Fibonacci positions (0, 1, 2, 3, 5, 8, 13, ...: the start closely, then ever
        further, as Misskey samples), each one decoded only when it is chosen; at most
        STREAM_KEYFRAMES keyframes read, none past NSFW_MAX_VIDEO_SECONDS."""
        stream, context = self.stream, self.stream.codec_context
        context.skip_frame = "NONKEY"
        keyframes = 0
        for packet in container.demux(stream):
            if not packet.is_keyframe:
                continue
            if keyframes > STREAM_KEYFRAMES or self.count >= self.job["frames"]:
                break
            position, keyframes = keyframes, keyframes + 1
            if position not in _FIBONACCI:
                continue
            for frame in packet.decode():
                time_s = _time(frame, stream)
                if self._too_late(time_s):
                    return
                self.send(frame, ("keyframe", position))


def _fibonacci(most: int) -> frozenset[int]:
    numbers, a, b = {0}, 1, 2
    while a <= most:
        numbers.add(a)
        a, b = b, a + b
    return frozenset(numbers)


_FIBONACCI = _fibonacci(STREAM_KEYFRAMES)


def _frames(container: Any, stream: Any) -> Any:
    for packet in container.demux(stream):
        yield from packet.decode()


def _send(out: Any, frame: Any, stream: Any, job: dict[str, Any]) -> None:
    if frame.width * frame.height > job["max_pixels"]:
        raise Refused("image_too_many_pixels", f"a frame of {frame.width}x{frame.height}")
    width, height = _fit(frame.width, frame.height, job["side"])
    rgb = frame.reformat(width=width, height=height, format="rgb24").to_ndarray()
    _say(out, {"frame": {"time_s": _time(frame, stream), "width": width, "height": height}}, rgb.tobytes())


def main() -> None:
    job = json.loads(sys.argv[1])
    _limit(job["memory_bytes"], job["cpu_seconds"])
    out = sys.stdout.buffer
    try:
        run(job, out)
    except Refused as refused:
        _say(out, {"error": refused.code, "detail": str(refused)[:300]})
    except MemoryError:
        _say(out, {"error": "video_too_complex", "detail": "the decoder's memory limit"})
    except Exception as exc:  # noqa: BLE001 - FFmpeg's errors (av.error.*): the file is not a video we read
        _say(out, {"error": "invalid_video", "detail": f"{type(exc).__name__}: {str(exc)[:300]}"})


if __name__ == "__main__":
    main()
