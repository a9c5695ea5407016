"""StageClock: the time spent in each stage of a swap, for one run (passed to the calls that do the work)."""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator

STAGES = ("decode", "detect", "track", "align", "swap", "blend", "encode")
_DONE = object()


class StageClock:
    """Adds the time spent in each stage to ``seconds``; ``observer(stage, seconds)`` sees every timed call.

    Stages run in different threads, so one stage's time overlaps the others': their sum exceeds the wall time.
    """

    def __init__(self, seconds: dict[str, float] | None = None,
                 observer: Callable[[str, float], None] | None = None):
        self.seconds = seconds if seconds is not None else dict.fromkeys(STAGES, 0.0)
        self.observer = observer
        self._lock = threading.Lock()
        self._notes: dict[str, int] = {}

    @contextmanager
    def __call__(self, stage: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - started
            with self._lock:
                self.seconds[stage] += elapsed
            if self.observer:
                self.observer(stage, elapsed)

    def note(self, text: str) -> None:
        """Counts a remark about this run that a stage makes per item (e.g. a face a swapper left untouched)."""
        with self._lock:
            self._notes[text] = self._notes.get(text, 0) + 1

    def notes(self) -> list[str]:
        """The remarks, each with its count: what a run's summary says."""
        with self._lock:
            return [f"{text}: {count}" for text, count in self._notes.items()]

    def iterate(self, stage: str, items: Iterable) -> Iterator:
        """``items``, with the time taken to produce each one counted to ``stage``."""
        iterator = iter(items)
        while True:
            with self(stage):
                item = next(iterator, _DONE)
            if item is _DONE:
                return
            yield item
