"""Who may fetch, parse or compute right now, in one worker: the download slots (fair per caller and
image host), single flight (one download per URL in progress, per tenant), the request bodies parsed
at once, and the model's lock. No Flask; nothing here decodes or classifies."""

from __future__ import annotations

import contextvars
import io
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import IO
from urllib.parse import urlsplit

from nsfw import metrics
from nsfw.config import FetchSettings, FlowSettings
from nsfw.errors import DeadlineExceeded, NsfwError, Overloaded, UpstreamTimeout
from nsfw.fetch import Fetcher, RequestShare
from nsfw.slots import FairSlots, ModelLock

# Whose request this is (the API key's name; "-" without keys): results and downloads in progress are
# shared within one tenant only, since a result found in the cache (it answers at once) or a download
# someone else has in flight would tell one key what another sent. Set by the web layer for each
# request (nsfw/web/api.py `_tenant`), read where they are shared; a batch's threads run in a copy of the
# request's context.
TENANT: contextvars.ContextVar[str] = contextvars.ContextVar("nsfw_tenant", default="-")


def host_of(url: str) -> str:
    """The host a URL names (lower case; "" when it names none): what a caller's downloads are shared by."""
    try:
        return (urlsplit(url).hostname or "").lower()
    except ValueError:
        return ""


@contextmanager
def holding(lock: ModelLock | threading.BoundedSemaphore, timeout: float, refuse: NsfwError) -> Iterator[None]:
    """Hold lock for the block, waiting at most timeout seconds for it; raise `refuse` otherwise."""
    if not lock.acquire(timeout=timeout):
        raise refuse
    try:
        yield
    finally:
        lock.release()


class _Flight:
    """One download that other requests for the same URL wait for (Flow.fetch)."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.followers = 0
        self.data: bytes | None = None
        self.error: NsfwError | None = None

    def land(self, body: IO[bytes], most: int) -> None:
        """The bytes, for those who wait: in memory when they are at most `most` (an image's cap); a
        larger body (a video) is not held in memory once per worker: they download it themselves."""
        if self.followers:  # a copy of the bytes only when someone waits for them
            body.seek(0, 2)
            if body.tell() <= most:
                body.seek(0)
                self.data = body.read()
            body.seek(0)
        self.done.set()

    def fail(self, error: NsfwError) -> None:
        self.error = error
        self.done.set()

    def join(self, timeout: float) -> IO[bytes] | None:
        """The shared bytes, or None when they were too large to share (download them yourself)."""
        if not self.done.wait(timeout):
            raise UpstreamTimeout("waited for the same URL's download in progress")
        if self.error is not None:
            raise type(self.error)(self.error.detail)
        return None if self.data is None else io.BytesIO(self.data)


class Flow:
    """The worker's admission inside the app (the front door, nsfw/web/frontend.py, admits requests
    before it): one per PredictionService."""

    def __init__(self, fetching: FetchSettings, flow: FlowSettings, fetcher: Fetcher) -> None:
        self.fetching = fetching
        self.settings = flow
        self.fetcher = fetcher
        # Downloads: NSFW_MAX_DOWNLOADS per worker, NSFW_MAX_IN_FLIGHT of them per caller; past either,
        # a spare slot (one per caller, a quarter of the worker's) for an image host that holds none,
        # so that a caller's slow upstream host leaves its other hosts room. Waiting on an upstream
        # never holds the model: a slow one costs its caller a download slot, nothing more.
        self._downloads = FairSlots(
            flow.max_downloads,
            flow.max_in_flight,
            spare_per_caller=1,
            spare=max(1, flow.max_downloads // 4),
        )
        # Decoding and inference run one at a time per worker: on one vCPU more would only
        # interleave, and it bounds memory to one decoded image per worker. A request waits for it
        # (NSFW_COMPUTE_WAIT) rather than failing, so a burst costs latency, not errors. Nothing that
        # may wait for it, and no network call, runs while holding it (slots.off_model).
        self._compute = ModelLock()
        # Request bodies parsed at once (JSON with base64 takes ~3x its size while parsed).
        self._body_decodes = threading.BoundedSemaphore(flow.max_body_decodes)
        # Videos decoded at once: each is a child process with its own memory (nsfw/imaging/video.py).
        self._video_decodes = threading.BoundedSemaphore(flow.max_video_decodes)
        # Downloads in progress by tenant and URL, for the requests of that tenant for the URL meanwhile.
        self._flights: dict[tuple[str, str], _Flight] = {}
        self._flights_lock = threading.Lock()

    @contextmanager
    def downloading(self, caller: str, host: str, wait: float = 0.0) -> Iterator[None]:
        """One of this caller's download slots for host, waiting up to `wait` seconds, or a fast 503."""
        refuse = Overloaded(f"{caller}'s downloads (or its downloads from {host}) all in flight")
        with self._downloads.holding(caller, wait, refuse, group=host):
            yield

    def decoding_body(self) -> AbstractContextManager[None]:
        """Held while a request body is parsed (nsfw/web/api.py), so that few are in memory at once."""
        refuse = Overloaded(f"{self.settings.max_body_decodes} bodies being parsed")
        return holding(self._body_decodes, self.settings.compute_wait, refuse)

    def decoding_video(self, deadline: float | None) -> AbstractContextManager[None]:
        """One of the worker's video decoders (NSFW_MAX_VIDEO_DECODES), after at most NSFW_COMPUTE_WAIT
        seconds (a batch's item: its deadline) in line, else a 503; never taken under the model's lock."""
        wait = self.settings.compute_wait if deadline is None else max(0.0, deadline - time.monotonic())
        refuse = Overloaded(f"{self.settings.max_video_decodes} videos being decoded")
        return holding(self._video_decodes, wait, refuse)

    def computing(self, deadline: float | None) -> AbstractContextManager[None]:
        """The worker's model, after at most NSFW_COMPUTE_WAIT seconds in line (a 503); a batch's item
        waits up to the batch's deadline instead (that item's 504), its items taking turns."""
        if deadline is not None:
            left = max(0.0, deadline - time.monotonic())
            return holding(self._compute, left, DeadlineExceeded("the deadline passed waiting for the model"))
        wait = self.settings.compute_wait
        return holding(self._compute, wait, Overloaded(f"model busy for {wait} s"))

    def request_share(self, single: bool = True) -> RequestShare:
        """What one client request may take from image hosts, all its fetches together: a single
        image's request as much as one video may be (NSFW_MAX_VIDEO_BYTES), a batch
        NSFW_MAX_REQUEST_DOWNLOAD_BYTES for all its items."""
        most = self.fetching.max_request_download_bytes
        if single:
            most = max(most, self.fetcher.policy.max_video_bytes)
        return RequestShare(most, self.fetching.max_host_connections)

    def fetch(
        self,
        url: str,
        caller: str,
        share: RequestShare,
        *,
        timeout: float | None = None,
        wait: float | None = None,
    ) -> IO[bytes]:
        """url's bytes, downloaded under one of caller's download slots (released once they are here),
        waiting for one up to `wait` seconds (NSFW_DOWNLOAD_WAIT by default), within the request's share.

        Single flight: a request for a URL this worker is downloading already waits for that download
        (under a download slot of its caller's, like a download of its own) and gets its bytes (or its
        error) instead of fetching again; with the result cache on, the model then runs once for them
        too (the lookup under the model's lock)."""
        shared = (TENANT.get(), url)
        with self._flights_lock:
            flight = self._flights.get(shared)
            leading = flight is None
            if flight is None:
                flight = self._flights[shared] = _Flight()
            else:
                flight.followers += 1
        if not leading:
            # Waiting takes one of the caller's download slots, as a download would: a flood of one
            # slow URL still meets its caller's share (fast 503s), it just fetches once.
            with self.downloading(caller, host_of(url), self.settings.download_wait if wait is None else wait):
                joined = flight.join(self.fetching.download_timeout if timeout is None else timeout)
            if joined is not None:
                return joined
            return self._download(url, caller, share, timeout=timeout, wait=wait)  # a video: its own copy
        try:
            body = self._download(url, caller, share, timeout=timeout, wait=wait)
        except NsfwError as exc:
            flight.fail(exc)
            raise
        finally:
            with self._flights_lock:
                del self._flights[shared]
        flight.land(body, self.fetching.max_bytes)
        return body

    def _download(
        self, url: str, caller: str, share: RequestShare, *, timeout: float | None, wait: float | None
    ) -> IO[bytes]:
        with self.downloading(caller, host_of(url), self.settings.download_wait if wait is None else wait):
            started = time.perf_counter()
            try:
                return self.fetcher.fetch(url, timeout=timeout, caller=caller, share=share)
            except NsfwError as exc:
                if exc.status in (502, 504):
                    metrics.UPSTREAM_ERRORS.labels(exc.code).inc()
                raise
            finally:
                metrics.STAGE_DURATION.labels("fetch", "-").observe(time.perf_counter() - started)
