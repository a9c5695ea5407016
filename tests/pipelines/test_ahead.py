"""made_ahead: an iterator's items made in a thread of their own; its failures and its end reach the taker."""
from __future__ import annotations

import threading
from contextlib import closing

import pytest

from swapstream.pipelines.ahead import made_ahead, made_in_stages


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


def test_stages_each_in_a_thread_of_their_own_give_the_last_ones_items_in_order():
    seen = {}

    def stage(name, step):
        def run(items):
            for item in items:
                seen.setdefault(name, set()).add(threading.current_thread().name)
                yield item * step
        return run

    out = list(made_in_stages(range(20), [stage("double", 2), stage("add", 1)]))
    assert out == [n * 2 for n in range(20)]
    assert seen == {"double": {"stage-1"}, "add": {"stage-2"}}
    assert not [t for t in threading.enumerate() if t.name.startswith("stage-")]


def test_a_stage_that_fails_ends_every_stage_and_its_error_is_raised_to_the_taker():
    def failing(items):
        for item in items:
            if item == 5:
                raise RuntimeError("stage broke at 5")
            yield item

    taken = []
    with pytest.raises(RuntimeError, match="stage broke at 5"):
        for item in made_in_stages(iter(range(1000)), [failing, lambda items: (i for i in items)]):
            taken.append(item)
    assert taken == [0, 1, 2, 3, 4]
    assert not [t for t in threading.enumerate() if t.name.startswith("stage-")]


def test_closing_the_stages_early_stops_every_thread():
    with closing(made_in_stages(iter(range(10**9)), [lambda items: (i + 1 for i in items)])) as out:
        assert next(out) == 1
    assert not [t for t in threading.enumerate() if t.name.startswith("stage-")]
