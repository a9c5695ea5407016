"""Large tensors to and from a Triton on this host through system shared memory, not inside the gRPC message.

A gRPC request carries its tensors in a protobuf message: serialised by the client, parsed by the server, and the
answer the same way back (measured: 117-129 ms of client CPU for a ``swap`` of 16 faces, 14-20 ms with shared
memory). A Triton on the same host can instead read the inputs from, and write the outputs into, a region both map:

- One region per (server, calling thread): calls from several threads run at once, each writes only its own.
  It is registered once and reused, sized with headroom (``HEADROOM``), and replaced by a bigger one when a
  bigger batch comes. Regions of threads that have ended are given back when the next region is made.
- Its ``/dev/shm`` name is unlinked as soon as Triton has mapped it (Triton maps a region when it is registered and
  never opens it again): the memory lives while the client and the server map it, and no file is left behind
  however the client dies, SIGKILL included. Names start with ``PREFIX``, then this host's tag and the pid: a
  file left by a process killed between creating and registering a region (a few microseconds) is removed by
  the next client on the host (``sweep_files``), as are the server's registrations of dead processes
  (``ServerMemory`` on its first region), which would otherwise keep their memory mapped in the server.
- A server is local when its address is one of this host's (``is_local``); others keep plain gRPC. A local
  server that cannot map the region (a container with its own ``/dev/shm``) refuses the registration: that
  server then keeps plain gRPC too, said once in the log.

Only tensors of at least ``MIN_BYTES`` go through the region; outputs only where the caller knows their size
before the call (``Layout``): a region must be big enough before Triton writes into it.
"""
from __future__ import annotations

import hashlib
import ipaddress
import logging
import mmap
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype, triton_to_np_dtype

log = logging.getLogger("swapstream.triton")

SHM_FOLDER = Path("/dev/shm")
PREFIX = "swapstream_client_"
MIN_BYTES = 64 * 1024  # smaller tensors ride in the message: a copy into the region would save nothing
HEADROOM = 1.5         # a region is made this much bigger than the call that needed it
ALIGN = 64             # each tensor's offset in the region
# A region was once still registered after its release right after a call, under load (a request the server had
# not let go of yet, presumably); the unregistration is tried again a few times, 0.75 s at most.
UNREGISTER_TRIES = 5


def _host_tag() -> str:
    """This host (boot) and pid namespace: pids in region names are only compared with processes that share both."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        pid_ns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        boot, pid_ns = socket.gethostname(), 0
    return hashlib.sha256(f"{boot}:{pid_ns}".encode()).hexdigest()[:8]


HOST_TAG = _host_tag()
MINE = f"{PREFIX}{HOST_TAG}_"  # the names of this host's regions: MINE + pid + "_" + ...


def is_local(address: str) -> bool:
    """``host:port`` (an IP, as the balancer resolves it) is one of this host's addresses."""
    host = address.rpartition(":")[0].strip("[]")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if ip.is_loopback:
        return True
    # Only an address of one of this host's interfaces can be bound.
    with socket.socket(socket.AF_INET6 if ip.version == 6 else socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((str(ip), 0))
        except OSError:
            return False
    return True


def _pid_of(name: str) -> int | None:
    """The pid in a region name of this host, else None."""
    if not name.startswith(MINE):
        return None
    pid = name[len(MINE):].split("_", 1)[0]
    return int(pid) if pid.isdigit() else None


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def sweep_files() -> int:
    """Removes ``/dev/shm`` regions of this host's dead processes; returns how many."""
    removed = 0
    for path in SHM_FOLDER.glob(f"{MINE}*"):
        pid = _pid_of(path.name)
        if pid is not None and not _alive(pid):
            try:
                path.unlink()
                removed += 1
            except FileNotFoundError:
                pass
    return removed


class Region:
    """A mapped region registered with one server under ``name``; its ``/dev/shm`` file is already unlinked."""

    def __init__(self, size: int, client: grpcclient.InferenceServerClient):
        self.name = f"{MINE}{os.getpid()}_{uuid.uuid4().hex[:12]}"
        self.size = size
        self._client = client
        path = SHM_FOLDER / self.name
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            os.ftruncate(fd, size)
            self._map = mmap.mmap(fd, size)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        finally:
            os.close(fd)
        try:
            client.register_system_shared_memory(self.name, "/" + self.name, size)
        except BaseException:
            self._map.close()
            raise
        finally:
            path.unlink(missing_ok=True)
        self.bytes = np.frombuffer(self._map, np.uint8)

    def view(self, shape, dtype, offset: int) -> np.ndarray:
        return np.ndarray(shape, dtype, buffer=self.bytes, offset=offset)

    def release(self) -> None:
        """Unregisters the region (best effort: the server may be gone) and unmaps it."""
        refusal = ""
        for attempt in range(UNREGISTER_TRIES):
            try:
                self._client.unregister_system_shared_memory(self.name)
                break
            except InferenceServerException as error:
                if error.status() in ("StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED"):
                    break  # the server is gone, and its registrations with it
                refusal = error.message()
                time.sleep(0.05 * (attempt + 1))
        else:
            log.warning("Triton kept shared-memory region %s registered: %s", self.name, refusal)
        self.bytes = None
        try:
            self._map.close()
        except BufferError:  # an array still views it: the mapping goes with the last view
            pass


class ServerMemory:
    """The regions of one local server, one per calling thread."""

    def __init__(self, address: str, client: grpcclient.InferenceServerClient):
        self.address = address
        self._client = client
        self._regions: dict[threading.Thread, Region] = {}
        self._lock = threading.Lock()
        self.refused = ""  # why this server takes no regions (then calls keep plain gRPC)
        self._swept = False

    def region(self, nbytes: int) -> Region | None:
        """This thread's region, at least ``nbytes`` (made or grown now); None when the server refused one."""
        thread = threading.current_thread()
        with self._lock:
            current = self._regions.get(thread)
        if current is not None and current.size >= nbytes:
            return current
        if self.refused:
            return None
        self._first_use()
        size = -(-int(nbytes * HEADROOM) // mmap.PAGESIZE) * mmap.PAGESIZE
        try:
            region = Region(size, self._client)
        except (InferenceServerException, OSError) as error:
            self.refused = str(error).strip()[:200]
            log.warning("Triton server %s cannot map this process's shared memory (%s): its calls keep plain gRPC",
                        self.address, self.refused)
            return None
        with self._lock:
            old = self._regions.pop(thread, None)
            self._regions[thread] = region
            ended = [t for t in self._regions if not t.is_alive()]
            dropped = [self._regions.pop(t) for t in ended]
        for stale in ([old] if old else []) + dropped:
            stale.release()
        return region

    def _first_use(self) -> None:
        if self._swept:
            return
        self._swept = True
        sweep_files()
        try:
            status = self._client.get_system_shared_memory_status(as_json=True)
        except InferenceServerException:
            return
        for name in status.get("regions", {}):
            pid = _pid_of(name)
            if pid is not None and not _alive(pid):
                try:
                    self._client.unregister_system_shared_memory(name)
                except InferenceServerException:
                    pass

    def forget(self) -> None:
        """Gives back every region (the server restarted and lost them, or the client closes)."""
        with self._lock:
            regions, self._regions = list(self._regions.values()), {}
        for region in regions:
            region.release()

    def names(self) -> list[str]:
        with self._lock:
            return [r.name for r in self._regions.values()]


def lost_region(error: InferenceServerException) -> bool:
    """The server does not know a region the request names (it restarted since it was registered)."""
    message = (error.message() or "").lower()
    return "shared memory region" in message and ("unable to find" in message or "not registered" in message
                                                  or "invalid" in message)


@dataclass(frozen=True)
class Layout:
    """Where a call's tensors go: which inputs and outputs through the region, at what offsets."""

    inputs: dict[str, np.ndarray]
    outputs: list[str]
    in_region: dict[str, int]                          # input name -> offset
    out_region: dict[str, tuple[int, int]]             # output name -> (offset, bytes)
    nbytes: int

    @classmethod
    def plan(cls, inputs: dict[str, np.ndarray], outputs: list[str],
             output_sizes: dict[str, int] | None = None) -> "Layout":
        """``output_sizes``: the byte size of outputs known before the call (others come in the answer)."""
        offset, in_region, out_region = 0, {}, {}
        for name, value in inputs.items():
            if value.nbytes >= MIN_BYTES:
                in_region[name] = offset
                offset += -(-value.nbytes // ALIGN) * ALIGN
        for name, size in (output_sizes or {}).items():
            if size >= MIN_BYTES and name in outputs:
                out_region[name] = (offset, size)
                offset += -(-size // ALIGN) * ALIGN
        return cls(inputs, outputs, in_region, out_region, offset)

    def request(self, region: Region | None) -> tuple[list, list]:
        """Triton's inputs and requested outputs: through ``region`` where planned, else in the message."""
        tensors = []
        for name, value in self.inputs.items():
            tensor = grpcclient.InferInput(name, list(value.shape), np_to_triton_dtype(value.dtype))
            if region is not None and name in self.in_region:
                offset = self.in_region[name]
                region.view(value.shape, value.dtype, offset)[...] = value
                tensor.set_shared_memory(region.name, value.nbytes, offset)
            else:
                tensor.set_data_from_numpy(np.ascontiguousarray(value))
            tensors.append(tensor)
        wanted = []
        for name in self.outputs:
            output = grpcclient.InferRequestedOutput(name)
            if region is not None and name in self.out_region:
                offset, size = self.out_region[name]
                output.set_shared_memory(region.name, size, offset)
            wanted.append(output)
        return tensors, wanted

    def answer(self, result, region: Region | None) -> dict[str, np.ndarray]:
        """The outputs as arrays of their own (copied out of the region: its next call overwrites it)."""
        arrays = {}
        for name in self.outputs:
            if region is not None and name in self.out_region:
                tensor = result.get_output(name)
                dtype = triton_to_np_dtype(tensor.datatype)
                arrays[name] = region.view(tuple(tensor.shape), dtype, self.out_region[name][0]).copy()
            else:
                arrays[name] = result.as_numpy(name)
        return arrays
