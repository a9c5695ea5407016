"""An iterator's items made in a thread of their own, a few ahead of the one who takes them; and stages chained so.

The reader decodes a video's frames in such a thread while its own thread converts the previous ones to RGB: the
two overlap on two cores, and the decoder needs no frame threads of its own there (which cost about 1 CPU-ms a 720p
H.264 frame in synchronisation on this 2-core machine).
"""
from __future__ import annotations

import queue
import threading
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")

_END = object()


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


def made_ahead(items: Iterator[T], depth: int = 4, name: str = "made-ahead") -> Iterator[T]:
    """Yields what ``items`` yields, made in a thread of its own up to ``depth`` items ahead.

    An exception of ``items`` is raised here, where its item would have come. Closing this generator (``close()``,
    or ``contextlib.closing``) stops the thread and waits for it: nothing of ``items`` runs after that, so what
    ``items`` reads from (a file, a container) may be closed then.
    """
    ready: queue.Queue = queue.Queue(depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def make() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_END)
        except BaseException as error:  # handed to the taker, raised in its thread
            put(_Failed(error))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=make, name=name, daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join()


def made_in_stages(source: Iterable, stages: list[Callable[[Iterator], Iterator]], depth: int = 2) -> Iterator:
    """What the last stage yields: the source and each stage (an iterator of items to an iterator of items) run in a
    thread of their own (``made_ahead``), ``depth`` items apart. The first failure ends the stages after it and is
    raised here. Closing this stops every thread, the last stage first."""
    chain = [made_ahead(iter(source), depth, "stage-0")]
    for n, stage in enumerate(stages, 1):
        chain.append(made_ahead(stage(chain[-1]), depth, f"stage-{n}"))
    try:
        yield from chain[-1]
    finally:
        for ahead in reversed(chain):
            ahead.close()
