"""A real live scheduler driven from a test, without sockets: streams on an event loop of their own, frames put in
them directly and their answers read from their outboxes; the Prometheus series from the scheduler's own registry."""
from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

from prometheus_client import CollectorRegistry

from swapstream.services.engine.swapper import FaceSwapper
from swapstream.services.live.limits import LiveLimits
from swapstream.services.live.metrics import LiveMetrics
from swapstream.services.live.scheduler import Scheduler
from swapstream.services.live.stream import LiveStream, StreamOptions


@dataclass
class SchedulerRun:
    scheduler: Scheduler
    metrics: LiveMetrics
    registry: CollectorRegistry
    loop: asyncio.AbstractEventLoop

    def stream(self, name: str, identity: dict, **options) -> LiveStream:
        stream = LiveStream(name, identity, StreamOptions(**options), 2, self.metrics, self.loop)
        assert self.scheduler.add(stream)
        return stream

    def value(self, series: str, **labels) -> float:
        return self.registry.get_sample_value(series, labels) or 0.0


@contextmanager
def running_scheduler(swappers: Callable[[str, str], FaceSwapper], limits: LiveLimits) -> Iterator[SchedulerRun]:
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, daemon=True)
    runner.start()
    registry = CollectorRegistry()
    metrics = LiveMetrics(registry)
    scheduler = Scheduler(swappers, limits, metrics)
    try:
        scheduler.start()
        yield SchedulerRun(scheduler, metrics, registry, loop)
    finally:
        scheduler.stop()
        loop.call_soon_threadsafe(loop.stop)
        runner.join(10)


def collect(stream: LiveStream, count: int, timeout: float = 120) -> Future:
    """Starts reading the next ``count`` messages for the client, ("answer", packed frame) or ("text", JSON), on the
    stream's event loop as the service's sender reads them (so the stream does not take the test for a client that
    does not read); the future's result is the list."""
    async def read() -> list:
        messages = []
        while len(messages) < count:
            kind, payload = await stream.outbox.get()
            stream.answers_queued -= kind == "answer"
            messages.append((kind, payload))
        return messages

    return asyncio.run_coroutine_threadsafe(asyncio.wait_for(read(), timeout), stream.loop)


def answers(stream: LiveStream, count: int, timeout: float = 120) -> list[tuple[str, object]]:
    """The next ``count`` messages for the client (``collect``), waited for."""
    return result(collect(stream, count, timeout), count)


def result(pending: Future, count: int) -> list[tuple[str, object]]:
    try:
        return pending.result()
    except (asyncio.TimeoutError, TimeoutError):
        raise AssertionError(f"fewer than {count} answers in time") from None
