"""made_ahead: an iterator's items made in a thread of their own; its failures and its end reach the taker."""
from __future__ import annotations

import threading
from contextlib import closing

import pytest

from swapstream.pipelines.ahead import made_ahead


def _threads(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == name]


def test_items_come_in_order_made_in_another_thread():
    makers = []

    def items():
        for i in range(50):
            makers.append(threading.current_thread())
            yield i

    assert list(made_ahead(items(), depth=3, name="ahead-order")) == list(range(50))
    assert {t.name for t in makers} == {"ahead-order"}
    assert not _threads("ahead-order")


def test_a_failure_is_raised_where_its_item_would_have_come():
    def items():
        yield 1
        yield 2
        raise OSError("disk gone")

    taken = []
    with pytest.raises(OSError, match="disk gone"):
        for item in made_ahead(items(), name="ahead-failure"):
            taken.append(item)
    assert taken == [1, 2]
    assert not _threads("ahead-failure")


def test_closing_early_stops_the_maker_and_closes_the_items():
    made, closed = [], threading.Event()

    def items():
        try:
            for i in range(10_000):
                made.append(i)
                yield i
        finally:
            closed.set()

    with closing(made_ahead(items(), depth=2, name="ahead-close")) as ahead:
        assert next(ahead) == 0
    # Closed: the maker has stopped (joined) and the source was closed in its thread; nothing runs any more.
    assert closed.is_set() and not _threads("ahead-close")
    assert len(made) <= 4  # the one taken, the queue's two, the one that waited to be put
