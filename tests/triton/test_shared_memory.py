"""Large tensors through system shared memory to the session's real Triton (services/triton/shared_memory.py):
the same answers as plain gRPC, regions per thread, grown for a bigger batch, given back on close, nothing left in
/dev/shm or in the server after the client is SIGKILLed, and plain gRPC for a server on another host."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from swapstream.services.triton import shared_memory as shm
from swapstream.services.triton.balancer import TritonPool
from swapstream.services.triton.client import SwapstreamClient
from tests.helpers.media import read_rgb


@pytest.fixture
def own_client(triton):
    """A client with a pool of its own (shared memory on), closed by the test or at its end."""
    pool = TritonPool(triton.grpc_url)
    client = SwapstreamClient(triton.grpc_url, pool=pool)
    yield client, pool
    pool._release()


@pytest.fixture(scope="module")
def plain(triton):
    pool = TritonPool(triton.grpc_url, shared_memory=False)
    yield SwapstreamClient(triton.grpc_url, pool=pool)
    pool._release()


def registered(triton) -> set[str]:
    with grpcclient.InferenceServerClient(triton.grpc_url) as admin:
        return set(admin.get_system_shared_memory_status(as_json=True).get("regions", {}))


def wait_for(condition, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.1)


def files_of(pid: int) -> list[str]:
    return [p.name for p in shm.SHM_FOLDER.glob(f"{shm.MINE}{pid}_*")]


def faces(k: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (k, 512, 512, 3), np.uint8)


def test_answers_through_shared_memory_equal_plain_grpc(own_client, plain, triton):
    client, pool = own_client
    frames = np.stack([read_rgb("img01_single_frontal_obama.jpg")[:360, :640]] * 3)
    found, expected = client.detect(frames), plain.detect(frames)
    assert len(found) > 0
    for name in ("boxes", "scores", "landmarks", "frame_index"):
        assert np.array_equal(getattr(found, name), getattr(expected, name)), name
    crops = faces(3, 1)
    for got, want in zip(client.swap(crops, np.ones(512, np.float32)), plain.swap(crops, np.ones(512, np.float32))):
        assert got.dtype == want.dtype and np.array_equal(got, want)
    for got, want in zip(client.facemesh(crops), plain.facemesh(crops)):
        assert np.array_equal(got, want)
    assert np.array_equal(client.identity(crops[:, :112, :112]), plain.identity(crops[:, :112, :112]))
    # The answers above really came through a region: one, registered with the server, its file already gone.
    (names,) = pool.memory_regions().values()
    assert len(names) == 1 and set(names) <= registered(triton)
    assert files_of(os.getpid()) == []


def test_each_thread_has_its_own_region_and_its_own_answers(own_client, plain):
    client, pool = own_client
    inputs = [faces(2, seed) for seed in (2, 3)]
    answers: dict[int, tuple] = {}

    def run(i: int) -> None:
        for _ in range(3):
            answers[i] = client.swap(inputs[i], np.ones(512, np.float32))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    for i, crops in enumerate(inputs):
        want = plain.swap(crops, np.ones(512, np.float32))
        assert all(np.array_equal(g, w) for g, w in zip(answers[i], want))
    (names,) = pool.memory_regions().values()
    assert len(names) == 2


def test_a_bigger_batch_gets_a_bigger_region_and_the_old_one_is_unregistered(own_client, plain, triton):
    client, pool = own_client
    client.swap(faces(1, 4), np.ones(512, np.float32))
    (small,) = next(iter(pool.memory_regions().values()))
    client.swap(faces(1, 5), np.ones(512, np.float32))
    assert next(iter(pool.memory_regions().values())) == [small]  # reused
    crops = faces(4, 6)
    got = client.swap(crops, np.ones(512, np.float32))
    (big,) = next(iter(pool.memory_regions().values()))
    # The old region is unregistered by the pool's watcher (each probe_interval), not by the calling thread.
    wait_for(lambda: small not in registered(triton), 20)
    assert big != small and small not in registered(triton) and big in registered(triton)
    assert all(np.array_equal(g, w) for g, w in zip(got, plain.swap(crops, np.ones(512, np.float32))))


def test_closing_the_client_unregisters_its_regions(triton):
    pool = TritonPool(triton.grpc_url)
    client = SwapstreamClient(triton.grpc_url, pool=pool)
    client.facemesh(faces(1, 7))
    (names,) = pool.memory_regions().values()
    assert set(names) <= registered(triton)
    pool._release()
    assert not set(names) & registered(triton)
    assert files_of(os.getpid()) == []


CHILD = """
import sys, time
import numpy as np
from swapstream.services.triton.client import SwapstreamClient
client = SwapstreamClient(sys.argv[1])
client.swap(np.zeros((2, 512, 512, 3), np.uint8), np.ones(512, np.float32))
print(*next(iter(client._pool.memory_regions().values())), flush=True)
time.sleep(600)
"""


def test_a_sigkilled_client_leaves_no_file_and_the_next_one_clears_its_registrations(triton):
    child = subprocess.Popen([sys.executable, "-c", CHILD, triton.grpc_url], stdout=subprocess.PIPE, text=True)
    try:
        names = child.stdout.readline().split()
        assert names, "the child made no region"
        assert set(names) <= registered(triton)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert files_of(child.pid) == []
    # The server still maps the dead process's regions until a client on this host clears them.
    pool = TritonPool(triton.grpc_url)
    try:
        SwapstreamClient(triton.grpc_url, pool=pool).facemesh(faces(1, 8))
        assert not set(names) & registered(triton)
    finally:
        pool._release()


def test_a_server_on_another_host_gets_plain_grpc(triton, plain):
    assert shm.is_local("127.0.0.1:8001") and shm.is_local("[::1]:8001")
    assert not shm.is_local("192.0.2.1:8001")  # TEST-NET-1: never an address of this host
    before = registered(triton)
    pool = TritonPool(triton.grpc_url, local=lambda address: False)
    try:
        crops = faces(2, 9)
        got = SwapstreamClient(triton.grpc_url, pool=pool).swap(crops, np.ones(512, np.float32))
        assert all(np.array_equal(g, w) for g, w in zip(got, plain.swap(crops, np.ones(512, np.float32))))
        assert pool.memory_regions() == {} and registered(triton) == before
    finally:
        pool._release()


def test_a_region_the_server_lost_is_registered_again(own_client, plain, triton):
    client, pool = own_client
    crops = faces(2, 10)
    client.swap(crops, np.ones(512, np.float32))
    (lost,) = next(iter(pool.memory_regions().values()))
    with grpcclient.InferenceServerClient(triton.grpc_url) as admin:  # as a restarted server would have forgotten it
        for _ in range(50):  # Triton refuses while the finished call still holds the region, for a moment
            try:
                admin.unregister_system_shared_memory(lost)
                break
            except InferenceServerException as error:
                assert "in use" in error.message(), error
                time.sleep(0.05)
    got = client.swap(crops, np.ones(512, np.float32))
    assert all(np.array_equal(g, w) for g, w in zip(got, plain.swap(crops, np.ones(512, np.float32))))
    (again,) = next(iter(pool.memory_regions().values()))
    assert again != lost and again in registered(triton)


class FakeServer:
    """A Triton client's registration calls, recorded; ``refuse`` unregistrations answered 'currently in use'."""

    def __init__(self, refuse: int = 0):
        self.calls: list[tuple[str, dict]] = []
        self.registered: set[str] = set()
        self.refuse = refuse

    def register_system_shared_memory(self, name, key, byte_size, **kwargs):
        self.calls.append(("register", kwargs))
        self.registered.add(name)

    def unregister_system_shared_memory(self, name="", **kwargs):
        self.calls.append(("unregister", kwargs))
        if self.refuse:
            self.refuse -= 1
            raise InferenceServerException(f"Cannot unregister shared memory region '{name}', it is currently in "
                                           "use.", "StatusCode.INTERNAL")
        self.registered.discard(name)

    def get_system_shared_memory_status(self, **kwargs):
        self.calls.append(("status", kwargs))
        return {"regions": {}}


def in_live_thread(function, finish: threading.Event):
    """``function()`` run in a thread that stays alive (its region is not reaped) until ``finish`` is set."""
    result, ran = [], threading.Event()

    def run():
        result.append(function())
        ran.set()
        finish.wait(30)

    threading.Thread(target=run, daemon=True).start()
    assert ran.wait(30)
    return result[0]


def test_a_region_given_back_is_unregistered_by_collect_not_by_the_caller_and_tried_again_while_refused():
    server = FakeServer(refuse=2)
    memory = shm.ServerMemory("127.0.0.1:1", server, timeout=3.0)
    small = memory.region(shm.MIN_BYTES)
    started = time.monotonic()
    big = memory.region(10 * small.size)
    assert time.monotonic() - started < 0.1  # no waiting for the server in the calling thread
    assert big is not small and small.name in server.registered and memory.names() == [big.name]
    with pytest.raises(RuntimeError, match="given back"):
        small.view((4,), np.uint8, 0)  # never a silent fresh array
    assert memory.collect() == 1 and memory.collect() == 1  # refused twice ('currently in use'): kept
    assert memory.collect() == 0 and small.name not in server.registered
    memory.close()
    assert server.registered == set() and memory.names() == []
    # Every registration call had the deadline.
    assert server.calls and all(kwargs.get("client_timeout") == 3.0 for _, kwargs in server.calls)


def test_a_lost_region_is_replaced_for_the_calling_thread_only():
    memory = shm.ServerMemory("127.0.0.1:1", FakeServer())
    finish = threading.Event()
    other = in_live_thread(lambda: memory.region(shm.MIN_BYTES), finish)
    mine = memory.region(shm.MIN_BYTES)
    memory.drop_current()
    assert memory.names() == [other.name]
    other.view((4,), np.uint8, 0)[...] = 1  # the other thread's region still works
    with pytest.raises(RuntimeError):
        mine.view((4,), np.uint8, 0)
    again = memory.region(shm.MIN_BYTES)
    assert again is not mine and set(memory.names()) == {other.name, again.name}
    finish.set()
    memory.close()


def test_a_full_dev_shm_fails_that_call_only(monkeypatch):
    memory = shm.ServerMemory("127.0.0.1:1", FakeServer())
    real = os.posix_fallocate

    def full(fd, offset, length):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    assert memory.region(shm.MIN_BYTES) is None and memory.refused == ""
    assert [p for p in shm.SHM_FOLDER.glob(f"{shm.MINE}{os.getpid()}_*")] == []  # nothing left behind
    monkeypatch.setattr(os, "posix_fallocate", real)
    region = memory.region(shm.MIN_BYTES)
    assert region is not None and region.size >= shm.MIN_BYTES
    memory.close()


def test_an_answer_without_an_asked_output_is_a_clear_server_fault(triton):
    """Triton once answered a call without one of its outputs (a bench run); the client says so instead of failing
    on a None: a real answer that lacks ``SCORES`` (asked only for ``BOXES``) read as one that should have it."""
    images = read_rgb("img01_single_frontal_obama.jpg")[None, :360, :640]
    asked = shm.Layout.plan({"IMAGES": images}, ["BOXES"])
    with grpcclient.InferenceServerClient(triton.grpc_url) as client:
        inputs, outputs = asked.request(None)
        result = client.infer("detect", inputs, outputs=outputs)
    assert set(asked.answer(result, None)) == {"BOXES"}
    wanted = shm.Layout.plan({"IMAGES": images}, ["BOXES", "SCORES"])
    with pytest.raises(shm.MissingOutput, match="model 'detect' lacks its output 'SCORES'") as caught:
        wanted.answer(result, None)
    assert caught.value.status() == "StatusCode.INTERNAL"  # a server fault: tried again, then another server
