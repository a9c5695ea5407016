"""Job changes pushed to the pages as Server-Sent Events (``GET /v1/jobs/events``).

One poller reads the store once per interval while anyone listens, whatever the number of listeners (the store
may be shared with other machines, so it is read rather than told). Each listener keeps what it last sent and is
sent only what changed since: a slow client skips intermediate states instead of queueing them. ``close()`` ends
every stream, so that uvicorn, which waits for open responses before it exits, can stop.
"""
from __future__ import annotations

import asyncio
import json
import logging
import threading
from typing import AsyncIterator, Callable

from starlette.concurrency import run_in_threadpool

from swapstream.services.jobs.store import JobStore, JobStoreError

log = logging.getLogger("swapstream.events")

KEEPALIVE_SECONDS = 15.0


class JobFeed:
    def __init__(self, store: JobStore, view: Callable, interval: float = 0.5, limit: int = 50):
        self.store = store
        self.view = view
        self.interval = interval
        self.limit = limit
        self.closed = threading.Event()   # set from uvicorn's signal handler: a plain flag, read every interval
        self.listeners = 0
        self._jobs: dict[str, dict] = {}  # the newest ``limit`` jobs, newest first
        self._total = 0
        self._version = 0
        self._changed: asyncio.Event | None = None
        self._poller: asyncio.Task | None = None

    def close(self) -> None:
        self.closed.set()

    async def _poll(self) -> None:
        while self.listeners and not self.closed.is_set():
            try:
                jobs, total = await run_in_threadpool(self.store.list, None, self.limit, 0)
            except JobStoreError as error:  # /readyz says so; the pages keep their last state and resume
                log.warning("job events: the store is unavailable: %s", error)
                await asyncio.sleep(self.interval)
                continue
            snapshot = {job.id: self.view(job) for job in jobs}
            if self._version == 0 or total != self._total or _stamps(snapshot) != _stamps(self._jobs):
                self._jobs, self._total = snapshot, total
                self._version += 1
                self._wake()
            await asyncio.sleep(self.interval)
        self._wake()  # closed: the listeners see it now
        self._poller = None
        self._version, self._jobs = 0, {}  # the next listener waits for a fresh read

    def _wake(self) -> None:
        if self._changed is not None:
            self._changed.set()
        self._changed = asyncio.Event()

    async def _next_change(self, seen: int) -> None:
        """Returns when the snapshot is newer than ``seen``, the feed closes, or the keep-alive is due."""
        deadline = asyncio.get_running_loop().time() + KEEPALIVE_SECONDS
        while self._version == seen and not self.closed.is_set():
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return
            try:  # woken by the poller, or every interval to see a close() made from a signal handler
                await asyncio.wait_for(self._changed.wait(), min(remaining, self.interval * 2))
            except asyncio.TimeoutError:
                pass

    async def stream(self) -> AsyncIterator[str]:
        """One listener's text/event-stream: a ``snapshot`` event (the newest jobs, newest first, and the total),
        then ``changes`` events (the jobs that changed, the ids no longer among the newest, the total)."""
        self.listeners += 1
        if self._changed is None:
            self._changed = asyncio.Event()
        if self._poller is None:
            self._poller = asyncio.create_task(self._poll())
        sent: dict[str, float] | None = None
        seen = 0
        try:
            yield "retry: 2000\n\n"
            while not self.closed.is_set():
                await self._next_change(seen)
                if self.closed.is_set():
                    break
                if self._version == seen:
                    yield ": keep-alive\n\n"
                    continue
                seen, jobs, total = self._version, self._jobs, self._total
                if sent is None:
                    kind, changed, removed = "snapshot", list(jobs.values()), []
                else:
                    kind = "changes"
                    changed = [job for job in jobs.values() if sent.get(job["id"]) != job["updated_at"]]
                    removed = [job_id for job_id in sent if job_id not in jobs]
                sent = _stamps(jobs)
                yield _event(kind, {"jobs": changed, "removed": removed, "total": total})
        finally:
            self.listeners -= 1


def _stamps(jobs: dict[str, dict]) -> dict[str, float]:
    return {job_id: job["updated_at"] for job_id, job in jobs.items()}


def _event(kind: str, data: dict) -> str:
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"
