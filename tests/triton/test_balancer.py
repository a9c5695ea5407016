"""Several Triton servers behind one client (services/triton/balancer.py), against the session's real Triton seen
through TCP forwarders that a test freezes (a SIGSTOPped server) or kills (a SIGKILLed one)."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from swapstream.services.triton import balancer
from swapstream.services.triton.balancer import TritonPool, TritonTargetError, parse_targets, resolve
from swapstream.services.triton.client import SwapstreamClient, TritonCallError
from tests.helpers.tcp_proxy import TcpProxy

CALL_BOUND = 60  # seconds a test waits for calls that must not hang (far past the probe's few seconds)


@pytest.fixture
def proxies(triton):
    with TcpProxy(triton.grpc_url) as a, TcpProxy(triton.grpc_url) as b:
        yield a, b


def detect_call(client: SwapstreamClient) -> int:
    return len(client.detect(np.zeros((1, 64, 64, 3), np.uint8)))


def calls(client: SwapstreamClient) -> dict[str, int]:
    return {address: s["calls"] for address, s in client.servers()["each"].items()}


def run_bounded(function, *args) -> list:
    """Runs ``function`` in a thread; fails the test if it has not returned within CALL_BOUND seconds."""
    out: list = []
    thread = threading.Thread(target=lambda: out.append(function(*args)), daemon=True)
    thread.start()
    thread.join(CALL_BOUND)
    assert not thread.is_alive(), f"the call did not return within {CALL_BOUND} s"
    return out


def test_targets_are_host_port_lists_and_names_resolve_to_every_address():
    assert parse_targets("a:8001, [::1]:8001,10.0.0.2:9") == [("a", 8001), ("::1", 8001), ("10.0.0.2", 9)]
    for wrong in ("a", "a:", ":8001", "a:port", "a:8001,", "a:70000"):
        with pytest.raises(TritonTargetError, match="host:port"):
            parse_targets(wrong)
    assert resolve("localhost", 8001) == ["127.0.0.1:8001"]
    assert resolve("::1", 8001) == ["[::1]:8001"]


def test_calls_are_spread_over_the_servers_with_the_same_answers(proxies, client):
    a, b = proxies
    spread = SwapstreamClient(f"{a.address},{b.address}")
    try:
        images = np.zeros((2, 96, 96, 3), np.uint8)
        direct = client.detect(images)
        for _ in range(6):
            assert len(spread.detect(images)) == len(direct)
        assert spread.servers()["up"] == 2
        assert set(calls(spread).values()) == {3}
    finally:
        spread.close()


def test_a_killed_server_is_taken_out_and_its_calls_go_to_the_other(proxies):
    a, b = proxies
    spread = SwapstreamClient(f"{a.address},{b.address}", timeout=30)
    try:
        a.kill()
        assert run_bounded(lambda: [detect_call(spread) for _ in range(4)]) == [[0] * 4]
        status = spread.servers()
        assert status["up"] == 1 and not status["each"][a.address]["up"]
        assert "UNAVAILABLE" in status["each"][a.address]["reason"]
        assert spread.is_ready()
    finally:
        spread.close()


def test_a_frozen_server_is_taken_out_by_its_probe_and_comes_back_when_it_answers(triton):
    with TcpProxy(triton.grpc_url) as a, TcpProxy(triton.grpc_url) as b:
        pool = TritonPool(f"{a.address},{b.address}", probe_interval=0.5, probe_timeout=2.0)
        spread = SwapstreamClient(pool.targets, pool=pool)
        try:
            a.freeze()
            # No deadline on the calls: only the probe can free a call stuck on the frozen server.
            assert run_bounded(lambda: [detect_call(spread) for _ in range(4)]) == [[0] * 4]
            assert pool.status()["each"][a.address]["up"] is False
            assert "DEADLINE_EXCEEDED" in pool.status()["each"][a.address]["reason"]
            a.thaw()
            run_bounded(lambda: [pool.probe() for _ in range(3)])
            assert pool.status()["up"] == 2
        finally:
            pool._release()


def test_a_bad_request_is_not_retried_and_takes_no_server_out(proxies):
    a, b = proxies
    spread = SwapstreamClient(f"{a.address},{b.address}")
    try:
        before = sum(calls(spread).values())
        with pytest.raises(TritonCallError, match="detect"):
            spread._infer("detect", {"IMAGES": np.zeros((1, 64, 64), np.uint8)}, ["BOXES"])
        assert sum(calls(spread).values()) == before + 1
        assert spread.servers()["up"] == 2
    finally:
        spread.close()


def test_every_server_down_is_one_error_that_names_the_first_failure(proxies):
    a, b = proxies
    spread = SwapstreamClient(f"{a.address},{b.address}", timeout=10)
    try:
        a.kill()
        b.kill()
        with pytest.raises(TritonCallError, match="detect.*failed"):
            detect_call(spread)
        assert spread.servers()["up"] == 0 and not spread.is_ready()
    finally:
        spread.close()


def test_a_name_resolved_again_adds_and_removes_servers(proxies):
    a, b = proxies
    answers = {"now": [a.address]}
    pool = TritonPool("triton.example:8001", probe_interval=0.2, resolve_interval=0.2,
                      resolver=lambda host, port: answers["now"])
    try:
        assert list(pool.status()["each"]) == [a.address]
        answers["now"] = [a.address, b.address]
        run_bounded(lambda: _wait(lambda: pool.status()["servers"] == 2))
        answers["now"] = [b.address]
        run_bounded(lambda: _wait(lambda: list(pool.status()["each"]) == [b.address]))
        answers["now"] = []  # a DNS outage keeps what is known
        run_bounded(lambda: _wait(lambda: pool._resolved_at and list(pool.status()["each"]) == [b.address]))
    finally:
        pool._release()


def _wait(condition) -> None:
    while not condition():
        threading.Event().wait(0.05)


def test_clients_of_one_address_share_one_pool(triton):
    first = SwapstreamClient(triton.grpc_url)
    users = first._pool._users
    second = SwapstreamClient(triton.grpc_url)
    assert first._pool is second._pool and first._pool._users == users + 1
    first.close()
    first.close()  # once only
    assert detect_call(second) == 0 and second._pool._users == users
    second.close()
    assert balancer._POOLS.get(triton.grpc_url) is not second._pool or second._pool._users == users - 1
