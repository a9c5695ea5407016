"""Several Triton servers behind one client: calls spread over the healthy ones, a failing one taken out.

``--triton`` names one or more servers, ``host:port[,host:port...]``. A host that is a name is resolved to all its
addresses, and resolved again while the process runs: a Kubernetes headless Service answers with one address per
ready pod, and a gRPC client that connected to one name would otherwise keep its HTTP/2 connection to one pod.

- Each call goes to the up server with the fewest calls in flight (ties in turn).
- A call that fails because of the server (unreachable, deadline passed, cancelled, an internal error) is sent again
  to another server, each server at most once per call; the caller sees a failure only when every server failed it.
  An error about the request itself (a bad tensor) is not retried.
- A watcher thread asks every server ``is_server_ready`` each ``probe_interval``, with a ``probe_timeout``
  deadline. A server that does not answer is down: new calls avoid it, and its calls in flight are cancelled and sent
  again elsewhere (only while another server is up), so a frozen server (SIGSTOP) holds a call for about
  ``probe_timeout + probe_interval``, not for the call's whole deadline. A down server is probed as before and
  comes back when it answers.
- With every server down, calls still try them (one may have come back since its last probe).
- A server on this host gets the call's large tensors through system shared memory (``shared_memory``: regions
  per server and per calling thread, registered once, given back when the pool is released); others plain gRPC.
  A server that answers that it does not know a region (restarted since) gets the calling thread's region
  registered again, once a call. Regions given back while the pool runs are unregistered by the watcher.
  Tensors already on the GPU go to a server on this host through CUDA shared memory the same way (``cuda_memory``).

One ``TritonPool`` per target string is shared by every client of the process (``pool_for``), so a process has one
watcher and one gRPC channel per server whatever its number of clients.
"""
from __future__ import annotations

import ipaddress
import itertools
import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from swapstream.services.triton import cuda_memory
from swapstream.services.triton import shared_memory as shm

log = logging.getLogger("swapstream.triton")

PROBE_INTERVAL = 1.0     # seconds between two health rounds
PROBE_TIMEOUT = 10.0     # a server silent for this long is down (a loaded 2-core machine answers within it)
RESOLVE_INTERVAL = 10.0  # names are resolved again this often
# Statuses that say the server failed, not the request: the call is sent again to another server.
SERVER_FAULTS = {"StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED", "StatusCode.CANCELLED",
                 "StatusCode.INTERNAL", "StatusCode.UNKNOWN", "StatusCode.RESOURCE_EXHAUSTED"}
# Of those, the ones that also say the server cannot be reached now: it is taken out until a probe answers.
UNREACHABLE = {"StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED"}
# A model the server knows without a loaded version: the server is loading or unloading it (starting, or stopping
# after a SIGTERM), so it is taken out like an unreachable one rather than the call failed as a bad request.
NOT_LOADED = "has no available versions"


def _server_fault(error: InferenceServerException) -> tuple[bool, bool]:
    """(the server failed the call, not the request; it cannot serve now and is taken out)."""
    if error.status() == "StatusCode.NOT_FOUND" and NOT_LOADED in (error.message() or ""):
        return True, True
    return error.status() in SERVER_FAULTS, error.status() in UNREACHABLE


class TritonTargetError(ValueError):
    """A ``--triton`` value that does not name servers."""


def parse_targets(targets: str) -> list[tuple[str, int]]:
    """``host:port[,host:port...]`` (IPv6 as ``[addr]:port``) -> [(host, port)]."""
    parsed = []
    for entry in (part.strip() for part in targets.split(",")):
        host, sep, port = entry.rpartition(":")
        host = host.strip("[]")
        if not entry or not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise TritonTargetError(f"Triton server {entry!r} in {targets!r} is not host:port: give the gRPC "
                                    "address of each server, e.g. triton-a:8001,triton-b:8001")
        parsed.append((host, int(port)))
    return parsed


def resolve(host: str, port: int) -> list[str]:
    """``addr:port`` for every address of ``host`` (IPv4 first; IPv6 only for a name without IPv4 addresses)."""
    try:
        ipaddress.ip_address(host)
        return [_address(host, port)]
    except ValueError:
        pass
    found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    v4 = sorted({info[4][0] for info in found if info[0] == socket.AF_INET})
    v6 = sorted({info[4][0] for info in found if info[0] == socket.AF_INET6})
    return [_address(a, port) for a in (v4 or v6)]


def _address(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


@dataclass(eq=False)
class Server:
    address: str
    client: grpcclient.InferenceServerClient
    up: bool = True
    reason: str = ""
    in_flight: set = field(default_factory=set)
    calls: int = 0
    memory: shm.ServerMemory | None = None  # its shared-memory regions, for a server on this host
    gpu_memory: cuda_memory.CudaServerMemory | None = None  # its CUDA regions (tensors on the GPU), on this host too

    @property
    def memories(self) -> list[shm.ServerMemory]:
        """Its region keepers (system, CUDA): none for a server elsewhere."""
        return [memory for memory in (self.memory, self.gpu_memory) if memory]


class TritonPool:
    def __init__(self, targets: str, *, probe_interval: float = PROBE_INTERVAL, probe_timeout: float = PROBE_TIMEOUT,
                 resolve_interval: float = RESOLVE_INTERVAL,
                 resolver: Callable[[str, int], list[str]] = resolve, shared_memory: bool = True,
                 local: Callable[[str], bool] = shm.is_local):
        """``shared_memory``: large tensors to servers that ``local`` says are on this host go through system
        shared memory (else every call is plain gRPC)."""
        self.targets = targets
        self._shared_memory = shared_memory
        self._local = local
        self._named = parse_targets(targets)
        self.probe_interval = probe_interval
        self.probe_timeout = probe_timeout
        self.resolve_interval = resolve_interval
        self._resolver = resolver
        self._servers: dict[str, Server] = {}
        self._retired: list[Server] = []
        self._lock = threading.Lock()
        self._turn = itertools.count()
        self._stop = threading.Event()
        self._users = 0
        self._resolved_at = 0.0
        self._resolve()
        self.probe()  # a first round now: readiness and the first calls see the real state
        self._watcher = threading.Thread(target=self._watch, name="triton-pool", daemon=True)
        self._watcher.start()

    # --- servers -------------------------------------------------------------------------------------------------

    def _resolve(self) -> None:
        addresses = []
        for host, port in self._named:
            try:
                found = self._resolver(host, port)
                if not found:
                    raise OSError("no address")
                addresses += found
            except OSError as error:  # a DNS outage: keep the servers known so far
                log.warning("cannot resolve Triton host %s (%s); keeping the servers known so far", host, error)
                return
        self._resolved_at = time.monotonic()
        with self._lock:
            current = set(self._servers)
            for address in dict.fromkeys(addresses):
                if address not in current:
                    client = grpcclient.InferenceServerClient(address)
                    local = self._shared_memory and self._local(address)
                    memory = shm.ServerMemory(address, client, self.probe_timeout) if local else None
                    gpu_memory = cuda_memory.CudaServerMemory(address, client, self.probe_timeout) if local else None
                    self._servers[address] = Server(address, client, memory=memory, gpu_memory=gpu_memory)
                    if current:
                        log.warning("Triton server %s added (%s)", address, self.targets)
            for address in current - set(addresses):
                if addresses:  # a name that resolved to nothing is an outage, not an empty service
                    log.warning("Triton server %s removed (no longer in %s)", address, self.targets)
                    self._retired.append(self._servers.pop(address))

    def servers(self) -> list[Server]:
        with self._lock:
            return list(self._servers.values())

    def status(self) -> dict:
        """How many servers are up, and each server's state."""
        servers = self.servers()
        return {"up": sum(s.up for s in servers), "servers": len(servers),
                "each": {s.address: {"up": s.up, "reason": s.reason, "calls": s.calls} for s in servers}}

    # --- health ------------------------------------------------------------------------------------------------

    def probe(self) -> None:
        """One health round over every server, in parallel (a frozen one does not delay the others)."""
        threads = [threading.Thread(target=self._probe_one, args=(s,), daemon=True) for s in self.servers()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(self.probe_timeout + 5)

    def _probe_one(self, server: Server) -> None:
        try:
            ready = bool(server.client.is_server_ready(client_timeout=self.probe_timeout))
            reason = "" if ready else "not ready (loading models, or stopping)"
        except InferenceServerException as error:
            ready, reason = False, _short(error)
        if ready and not server.up:
            log.warning("Triton server %s is up again", server.address)
            server.up, server.reason = True, ""
        elif not ready:
            self._take_out(server, reason)

    def _take_out(self, server: Server, reason: str) -> None:
        with self._lock:
            was_up, server.up, server.reason = server.up, False, reason
            others_up = any(s.up for s in self._servers.values() if s is not server)
            stranded = list(server.in_flight) if others_up else []
        if was_up:
            log.warning("Triton server %s taken out: %s", server.address, reason)
        for call in stranded:  # each goes again to another server (see call())
            call.cancel()

    def _watch(self) -> None:
        while not self._stop.wait(self.probe_interval):
            if time.monotonic() - self._resolved_at >= self.resolve_interval:
                self._resolve()
            self.probe()
            for server in self.servers():
                for memory in server.memories if server.up else ():
                    memory.collect()  # regions given back since the last round (see shared_memory)
            with self._lock:
                retired, self._retired = self._retired, [s for s in self._retired if s.in_flight]
            for server in retired:
                if not server.in_flight:
                    _close(server)

    # --- calls ---------------------------------------------------------------------------------------------------

    def _pick(self, tried: set[str]) -> Server | None:
        with self._lock:
            left = [s for s in self._servers.values() if s.address not in tried]
            if not left:
                return None
            candidates = [s for s in left if s.up] or left
            turn = next(self._turn)
            # Fewest calls in flight; among those, in turn.
            fewest = min(len(s.in_flight) for s in candidates)
            candidates = [s for s in candidates if len(s.in_flight) == fewest]
            server = candidates[turn % len(candidates)]
            server.calls += 1
            return server

    def call(self, model: str, layout: shm.Layout, timeout: float | None) -> dict:
        """``model``'s outputs (name -> array) from the first server that answers; raises ``PoolCallError`` when
        none does."""
        tried: set[str] = set()
        first_error: tuple[str, InferenceServerException] | None = None
        while (server := self._pick(tried)) is not None:
            tried.add(server.address)
            try:
                return self._call_memory(server, model, layout, timeout)
            except InferenceServerException as error:
                fault, unreachable = _server_fault(error)
                if not fault:
                    raise PoolCallError(server.address, error) from error
                first_error = first_error or (server.address, error)
                if unreachable:
                    self._take_out(server, _short(error))
                if len(tried) < len(self.servers()):
                    log.warning("Triton model '%s' failed on %s (%s); sending the call to another server", model,
                                server.address, _short(error))
        if first_error is None:
            raise PoolCallError(self.targets, InferenceServerException("no Triton server known", "StatusCode.UNAVAILABLE"))
        raise PoolCallError(*first_error)

    def _call_memory(self, server: Server, model: str, layout: shm.Layout, timeout: float | None) -> dict:
        try:
            return self._call_region(server, model, layout, timeout)
        except shm.MissingOutput as error:
            log.warning("%s; calling server %s again", error.message(), server.address)
            return self._call_region(server, model, layout, timeout)
        except InferenceServerException as error:
            if not (server.memory and shm.lost_region(error)):
                raise
        log.warning("Triton server %s lost this process's shared memory (restarted?): registering it again",
                    server.address)
        for memory in server.memories:  # this thread's regions; other threads replace theirs when they find out
            memory.drop_current()
        return self._call_region(server, model, layout, timeout)

    def _call_region(self, server: Server, model: str, layout: shm.Layout, timeout: float | None) -> dict:
        """One call on ``server``, its large tensors through this thread's region when the server is local."""
        region = server.memory.region(layout.nbytes) if server.memory and layout.nbytes else None
        gpu = server.gpu_memory.region(layout.gpu_nbytes) if server.gpu_memory and layout.gpu_nbytes else None
        inputs, outputs = layout.request(region, gpu)
        return layout.answer(self._call_one(server, model, inputs, outputs, timeout), region)

    def _call_one(self, server: Server, model: str, inputs: list, outputs: list, timeout: float | None):
        done = threading.Event()
        answer: dict = {}

        def finished(result, error) -> None:
            answer["result"], answer["error"] = result, error
            done.set()

        call = server.client.async_infer(model, inputs, finished, outputs=outputs, client_timeout=timeout)
        with self._lock:
            server.in_flight.add(call)
        try:
            done.wait()
        finally:
            with self._lock:
                server.in_flight.discard(call)
            if not done.is_set():  # interrupted (Ctrl-C): do not leave the call running
                call.cancel()
        if answer["error"] is not None:
            raise answer["error"]
        return answer["result"]

    # --- lifetime ------------------------------------------------------------------------------------------------

    def _acquire(self) -> "TritonPool":
        self._users += 1
        return self

    def _release(self) -> bool:
        self._users -= 1
        if self._users > 0:
            return False
        self._stop.set()
        for server in self.servers() + self._retired:
            _close(server)
        return True

    def memory_regions(self) -> dict[str, list[str]]:
        """Server address -> the names of this process's shared-memory regions registered with it."""
        return {s.address: s.memory.names() for s in self.servers() if s.memory}


def _close(server: Server) -> None:
    for memory in server.memories:
        memory.close()
    server.client.close()


class PoolCallError(Exception):
    """Every server failed the call (or one refused the request itself): ``address`` and Triton's ``error``."""

    def __init__(self, address: str, error: InferenceServerException):
        super().__init__(f"{address}: {error.message()}")
        self.address, self.error = address, error


def _short(error: InferenceServerException) -> str:
    return f"{error.status() or 'error'}: {(error.message() or '').strip()[:200]}"


_POOLS: dict[str, TritonPool] = {}
_POOLS_LOCK = threading.Lock()


def pool_for(targets: str) -> TritonPool:
    """The process's pool for ``targets`` (created on first use); give it back with ``release``."""
    with _POOLS_LOCK:
        pool = _POOLS.get(targets)
        if pool is None:
            pool = _POOLS[targets] = TritonPool(targets)
        return pool._acquire()


def release(pool: TritonPool) -> None:
    with _POOLS_LOCK:
        if pool._release() and _POOLS.get(pool.targets) is pool:
            del _POOLS[pool.targets]
