"""Large tensors to and from a Triton on this host through system shared memory, not inside the gRPC message.

A gRPC request carries its tensors in a protobuf message: serialised by the client, parsed by the server, and the
answer the same way back (measured: 117-129 ms of client CPU for a ``swap`` of 16 faces, 14-20 ms with shared
memory). A Triton on the same host can instead read the inputs from, and write the outputs into, a region both map:

- One region per (server, calling thread): calls from several threads run at once, each writes only its own.
  It is registered once and reused, sized with headroom (``HEADROOM``), and replaced by a bigger one when a
  bigger batch comes. Regions of threads that have ended are given back when the next region is made.
- A region given back is unmapped at once, and unregistered later, from the pool's watcher thread (``collect``,
  each health round): Triton refuses to unregister a region a finished call still holds for a moment ("currently
  in use"), and the calling thread should not wait for it. Each round tries again until the server lets it go or
  is gone. Closing the pool unregisters every region (trying again for a moment).
- A region's memory is allocated when it is made (``posix_fallocate``): a full ``/dev/shm`` fails that call,
  which then goes as plain gRPC, instead of a SIGBUS when the region is first written.
- Every registration call has a deadline (the pool's ``probe_timeout``): a frozen server cannot hold the caller.
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

import errno
import hashlib
import ipaddress
import logging
import mmap
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype, triton_to_np_dtype

from swapstream.pipelines.device import device_shape, on_device, to_host
from swapstream.services.triton.reaper import SHM_FOLDER

log = logging.getLogger("swapstream.triton")

PREFIX = "swapstream_client_"
MIN_BYTES = 64 * 1024  # smaller tensors ride in the message: a copy into the region would save nothing
HEADROOM = 1.5         # a region is made this much bigger than the call that needed it
ALIGN = 64             # each tensor's offset in the region
# Triton refuses to unregister a region right after a call that used it ("currently in use"). Regions given back
# while the client runs are tried again each watcher round; at close, a few times (0.75 s at most).
UNREGISTER_TRIES = 5
# After this many refused rounds the log says so (the tries go on).
REFUSALS_LOGGED_AFTER = 30
# The server cannot be reached: its registrations are gone with it (or will be when it restarts).
GONE = ("StatusCode.UNAVAILABLE",)


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


class MissingOutput(InferenceServerException):
    """Triton answered without an output the call asked for (seen twice in five `swapstream bench` runs, on the
    stand-in `swap` ensemble; cause not found). A server fault: the call is tried once more."""

    def __init__(self, model: str, output: str):
        super().__init__(f"Triton's answer from model '{model}' lacks its output '{output}', which the call asked "
                         f"for; the server answered wrongly once: try again, and report it if it stays",
                         "StatusCode.INTERNAL")


class Region:
    """A mapped region registered with one server under ``name``; its ``/dev/shm`` file is already unlinked."""

    def __init__(self, size: int, client: grpcclient.InferenceServerClient, timeout: float | None = None):
        """``timeout``: the deadline of each registration call, in seconds."""
        self.name = f"{MINE}{os.getpid()}_{uuid.uuid4().hex[:12]}"
        self.size = size
        self._client = client
        self._timeout = timeout
        self.refusals = 0  # rounds the server refused to unregister it
        self.refusal = ""  # what it said the last time
        self.timed_out = False  # the last unregistration passed its deadline (a frozen server)
        path = SHM_FOLDER / self.name
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            # Allocated now: a full /dev/shm raises ENOSPC here, not SIGBUS at the first write.
            os.posix_fallocate(fd, 0, size)
            self._map = mmap.mmap(fd, size)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        finally:
            os.close(fd)
        try:
            client.register_system_shared_memory(self.name, "/" + self.name, size, client_timeout=timeout)
        except BaseException:
            self._map.close()
            raise
        finally:
            path.unlink(missing_ok=True)
        self.bytes = np.frombuffer(self._map, np.uint8)

    def view(self, shape, dtype, offset: int) -> np.ndarray:
        if self.bytes is None:
            raise RuntimeError(f"shared-memory region {self.name} was given back: it has no memory to view")
        return np.ndarray(shape, dtype, buffer=self.bytes, offset=offset)

    def unmap(self) -> None:
        """Unmaps the region on this side (``view`` raises from now on); the server keeps it until unregistered."""
        self.bytes = None
        try:
            self._map.close()
        except BufferError:  # an array still views it: the mapping goes with the last view
            pass

    def _unregister(self) -> None:
        self._client.unregister_system_shared_memory(self.name, client_timeout=self._timeout)

    def unregister(self) -> bool:
        """One try at unregistering the region: True when done (or the server is gone), False when refused."""
        self.timed_out = False
        try:
            self._unregister()
            return True
        except InferenceServerException as error:
            if error.status() in GONE:
                return True  # its registrations went with it
            self.timed_out = error.status() == "StatusCode.DEADLINE_EXCEEDED"
            self.refusal = (error.message() or error.status() or "").strip()[:200]
            return False

    def release(self) -> None:
        """Unmaps the region and unregisters it now, trying again for a moment (at close; best effort)."""
        self.unmap()
        for attempt in range(UNREGISTER_TRIES):
            if self.unregister():
                return
            if self.timed_out:  # a frozen server: closing does not wait for it again
                break
            if attempt + 1 < UNREGISTER_TRIES:
                time.sleep(0.05 * (attempt + 1))
        log.warning("Triton kept shared-memory region %s registered: %s", self.name, self.refusal)


class ServerMemory:
    """The regions of one local server, one per calling thread (system shared memory; ``cuda_memory`` keeps CUDA
    shared memory the same way, through ``_make`` and ``_first_use``)."""

    WHERE = str(SHM_FOLDER)  # where a region's memory is, for the log

    def __init__(self, address: str, client: grpcclient.InferenceServerClient, timeout: float | None = None):
        """``timeout``: the deadline of each registration call, in seconds (the pool's ``probe_timeout``)."""
        self.address = address
        self._client = client
        self._timeout = timeout
        self._regions: dict[threading.Thread, Region] = {}
        self._stale: list[Region] = []  # given back, unmapped, to be unregistered (``collect``)
        self._lock = threading.Lock()
        self.refused = ""  # why this server takes no regions (then calls keep plain gRPC)
        self._full = False  # /dev/shm was full at the last try (said once until a region is made again)
        self._closed = False
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
            region = self._make(size)
        except OSError as error:
            if error.errno not in (errno.ENOSPC, errno.ENOMEM):
                return self._refuse(error)
            # /dev/shm is full now: this call goes as plain gRPC, the next one tries again.
            if not self._full:
                log.warning("no room in %s for a %d-byte shared-memory region (%s): calls to Triton server %s go "
                            "as plain gRPC until there is", self.WHERE, size, error.strerror, self.address)
            self._full = True
            return None
        except InferenceServerException as error:
            return self._refuse(error)
        self._full = False
        with self._lock:
            old = self._regions.pop(thread, None)
            self._regions[thread] = region
            ended = [t for t in self._regions if not t.is_alive()]
            dropped = [self._regions.pop(t) for t in ended]
        self._give_back(([old] if old else []) + dropped)
        return region

    def _make(self, size: int) -> Region:
        """A new region of ``size`` bytes, registered with the server (OSError ENOSPC/ENOMEM: no room now)."""
        return Region(size, self._client, self._timeout)

    def _refuse(self, error: Exception) -> None:
        self.refused = str(error).strip()[:200]
        log.warning("Triton server %s cannot map this process's shared memory (%s): its calls keep plain gRPC",
                    self.address, self.refused)
        return None

    def _give_back(self, regions: list[Region]) -> None:
        """Unmaps ``regions`` now; ``collect`` unregisters them (the server may still hold them for a moment)."""
        for region in regions:
            region.unmap()
        with self._lock:
            self._stale += regions

    def drop_current(self) -> None:
        """Gives back the calling thread's region (the server lost it): its next call registers a new one. Other
        threads' regions, maybe in calls now, are kept (each is replaced by its own thread if lost too)."""
        with self._lock:
            region = self._regions.pop(threading.current_thread(), None)
        self._give_back([region] if region else [])

    def collect(self) -> int:
        """Unregisters the regions given back (one try each; called every watcher round); returns how many are
        still waiting for the server to let them go."""
        with self._lock:
            stale, self._stale = self._stale, []
        kept = []
        for i, region in enumerate(stale):
            if region.unregister():
                continue
            if region.timed_out:  # a frozen server: the others wait for the next round with this one
                kept += stale[i:]
                break
            region.refusals += 1
            if region.refusals == REFUSALS_LOGGED_AFTER:
                log.warning("Triton server %s still keeps shared-memory region %s registered after %d tries (%s); "
                            "trying again each round", self.address, region.name, region.refusals, region.refusal)
            kept.append(region)
        with self._lock:
            self._stale = kept + self._stale
            if not self._closed:
                return len(self._stale)
            kept, self._stale = self._stale, []  # closed meanwhile: closing does not leave them to the next round
        for region in kept:
            region.release()
        return 0

    def _first_use(self) -> None:
        if self._swept:
            return
        self._swept = True
        sweep_files()
        try:
            status = self._client.get_system_shared_memory_status(as_json=True, client_timeout=self._timeout)
        except InferenceServerException:
            return
        for name in status.get("regions", {}):
            pid = _pid_of(name)
            if pid is not None and not _alive(pid):
                try:
                    self._client.unregister_system_shared_memory(name, client_timeout=self._timeout)
                except InferenceServerException:
                    pass

    def close(self) -> None:
        """Unregisters and unmaps every region now, those waiting for ``collect`` too (the pool closes)."""
        with self._lock:
            self._closed = True
            regions, self._regions = list(self._regions.values()), {}
            regions += self._stale
            self._stale = []
        for region in regions:
            region.release()

    def names(self) -> list[str]:
        with self._lock:
            return [r.name for r in self._regions.values()]


def transport(value, local: bool, gpu_memory: bool = True) -> str:
    """How one input tensor goes to a server: "cuda" (a CUDA shared-memory region: a tensor already on the GPU, to
    a server on this host that takes ``gpu_memory``), "system" (a system shared-memory region: a large host array
    to a server on this host), or "message" (inside the gRPC message; a tensor on the GPU is copied to the host
    for it, once)."""
    if on_device(value):
        return "cuda" if local and gpu_memory else "message"
    return "system" if local and value.nbytes >= MIN_BYTES else "message"


def lost_region(error: InferenceServerException) -> bool:
    """The server does not know a region the request names (it restarted since it was registered)."""
    message = (error.message() or "").lower()
    return "shared memory region" in message and ("unable to find" in message or "not registered" in message
                                                  or "invalid" in message)


@dataclass(frozen=True)
class Layout:
    """Where a call's tensors go: which inputs and outputs through the region, at what offsets; inputs already on
    the GPU through a CUDA region (``cuda_memory``), back to back (tritonclient writes them so)."""

    inputs: dict[str, np.ndarray]
    outputs: list[str]
    in_region: dict[str, int]                          # input name -> offset
    out_region: dict[str, tuple[int, int]]             # output name -> (offset, bytes)
    nbytes: int
    on_gpu: dict[str, tuple[int, int]] = field(default_factory=dict)  # input name -> (offset, bytes) in a CUDA region
    gpu_nbytes: int = 0

    @classmethod
    def plan(cls, inputs: dict[str, np.ndarray], outputs: list[str],
             output_sizes: dict[str, int] | None = None) -> "Layout":
        """``output_sizes``: the byte size of outputs known before the call (others come in the answer)."""
        offset, in_region, out_region, gpu_offset, on_gpu = 0, {}, {}, 0, {}
        for name, value in inputs.items():
            kind = transport(value, local=True)  # what a server on this host gets; others get the message
            if kind == "cuda":
                shape, dtype = device_shape(value)
                on_gpu[name] = (gpu_offset, int(np.prod(shape)) * dtype.itemsize)
                gpu_offset += on_gpu[name][1]
            elif kind == "system":
                in_region[name] = offset
                offset += -(-value.nbytes // ALIGN) * ALIGN
        for name, size in (output_sizes or {}).items():
            if size >= MIN_BYTES and name in outputs:
                out_region[name] = (offset, size)
                offset += -(-size // ALIGN) * ALIGN
        return cls(inputs, outputs, in_region, out_region, offset, on_gpu, gpu_offset)

    def request(self, region: Region | None, gpu_region=None) -> tuple[list, list]:
        """Triton's inputs and requested outputs: through ``region`` (system shared memory) and ``gpu_region``
        (CUDA shared memory, ``cuda_memory.CudaRegion``) where planned, else in the message."""
        if gpu_region is not None and self.on_gpu:
            gpu_region.write([self.inputs[name] for name in self.on_gpu])
        tensors = []
        for name, value in self.inputs.items():
            if name in self.on_gpu:
                tensors.append(self._gpu_input(name, value, gpu_region))
                continue
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

    def _gpu_input(self, name: str, value, gpu_region) -> grpcclient.InferInput:
        shape, dtype = device_shape(value)
        tensor = grpcclient.InferInput(name, list(shape), np_to_triton_dtype(dtype))
        if gpu_region is not None:
            offset, nbytes = self.on_gpu[name]
            tensor.set_shared_memory(gpu_region.name, nbytes, offset)
        else:  # a server elsewhere (or one without CUDA shared memory): the one copy to the host
            tensor.set_data_from_numpy(np.ascontiguousarray(to_host(value)))
        return tensor

    def answer(self, result, region: Region | None) -> dict[str, np.ndarray]:
        """The outputs as arrays of their own (copied out of the region: its next call overwrites it)."""
        arrays = {}
        for name in self.outputs:
            tensor = result.get_output(name)
            if tensor is None:
                raise MissingOutput(result.get_response().model_name, name)
            if region is not None and name in self.out_region:
                dtype = triton_to_np_dtype(tensor.datatype)
                arrays[name] = region.view(tuple(tensor.shape), dtype, self.out_region[name][0]).copy()
            else:
                arrays[name] = result.as_numpy(name)
        return arrays
