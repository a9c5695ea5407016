"""Tensors already on the GPU to a Triton on this host through CUDA shared memory (device "gpu").

Frames kept on the GPU (``pipelines.device``: NVDEC's batches, their downscale for ``detect``) would otherwise be
copied to the host for the gRPC message, and Triton would copy them back to the GPU. Through CUDA shared memory they
are copied once, device to device, into a region the server maps by its CUDA IPC handle:

- ``tritonclient.utils.cuda_shared_memory``: ``create_shared_memory_region`` (device memory, ``cudaMalloc``),
  ``get_raw_handle`` (its IPC handle), ``set_shared_memory_region_from_dlpack`` (the call's device inputs written
  back to back, read through ``__dlpack__``), ``destroy_shared_memory_region``; the gRPC client's
  ``register_cuda_shared_memory`` / ``unregister_cuda_shared_memory``, and each input's ``set_shared_memory``.
- The regions are kept as the system ones are (``shared_memory.ServerMemory``): one per (server, calling thread),
  registered once, made ``HEADROOM`` bigger than the call that needed it and replaced when a bigger batch comes, given
  back when their thread has ended, unregistered by the pool's watcher (or at close) and freed once the server has let
  them go. No room on the device: that call goes in the message (the one host copy), the next one tries again.
- A server elsewhere gets a GPU tensor in the message, copied to the host once (``shared_memory.transport``). Host
  arrays keep system shared memory (or the message), whatever the device.
- Outputs come back as before (system shared memory or the message): what reads them next (the tracker, the swapper's
  CPU work, the blend's composite) is on the host.

It needs the ``cuda-python`` package (``pip install 'swapstream[gpu]'``); device "gpu" without it, or without a CUDA
GPU, is refused before any work starts (``pipelines.align.require_device``).
"""
from __future__ import annotations

import errno
import os
import uuid

import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from swapstream.services.triton import shared_memory as shm

NAME_PART = "cuda_"  # a CUDA region's name: shared_memory.MINE + pid + "_cuda_" + ...


def cuda_shared_memory():
    """tritonclient's CUDA shared-memory module (imported at the first CUDA region: 0.1 s, which a run on the CPU does
    not pay); ImportError (saying what to install) without cuda-python."""
    try:
        import tritonclient.utils.cuda_shared_memory as module
    except (ImportError, RuntimeError) as error:  # tritonclient raises RuntimeError when cuda-python is missing
        raise ImportError("CUDA shared memory to Triton needs the Python package cuda-python: "
                          "pip install 'swapstream[gpu]'") from error
    return module


class CudaRegion(shm.Region):
    """Device memory registered with one server under ``name`` by its CUDA IPC handle."""

    def __init__(self, size: int, client: grpcclient.InferenceServerClient, device_id: int = 0,
                 timeout: float | None = None):
        self._cudashm = cuda_shared_memory()
        self.name = f"{shm.MINE}{os.getpid()}_{NAME_PART}{uuid.uuid4().hex[:12]}"
        self.size = size
        self.device_id = device_id
        self._client = client
        self._timeout = timeout
        self.refusals, self.refusal, self.timed_out = 0, "", False
        self.bytes = None  # not host memory: ``view`` refuses; the inputs go in with ``write``
        try:
            self._handle = self._cudashm.create_shared_memory_region(self.name, size, device_id)
        except self._cudashm.CudaSharedMemoryException as error:
            raise OSError(errno.ENOMEM, f"no {size}-byte region on CUDA device {device_id} ({error})") from error
        try:
            client.register_cuda_shared_memory(self.name, self._cudashm.get_raw_handle(self._handle), device_id,
                                               size, client_timeout=timeout)
        except BaseException:
            self._free()
            raise

    def write(self, values: list) -> None:
        """The call's device inputs, back to back from the region's start (device to device, through DLPack)."""
        self._cudashm.set_shared_memory_region_from_dlpack(self._handle, values)

    def unmap(self) -> None:
        """Nothing on this side until the server has let the region go: its memory is freed then (``unregister``)."""

    def _unregister(self) -> None:
        self._client.unregister_cuda_shared_memory(self.name, client_timeout=self._timeout)

    def unregister(self) -> bool:
        done = super().unregister()
        if done:
            self._free()
        return done

    def _free(self) -> None:
        handle, self._handle = getattr(self, "_handle", None), None
        if handle is not None:
            self._cudashm.destroy_shared_memory_region(handle)


class CudaServerMemory(shm.ServerMemory):
    """The CUDA regions of one local server, one per calling thread (see ``shared_memory.ServerMemory``)."""

    WHERE = "GPU memory"

    def __init__(self, address: str, client: grpcclient.InferenceServerClient, timeout: float | None = None,
                 device_id: int = 0):
        super().__init__(address, client, timeout)
        self.device_id = device_id

    def _make(self, size: int) -> CudaRegion:
        return CudaRegion(size, self._client, self.device_id, self._timeout)

    def _first_use(self) -> None:
        """The server's CUDA regions of this host's dead processes are unregistered (their memory went with them)."""
        if self._swept:
            return
        self._swept = True
        try:
            status = self._client.get_cuda_shared_memory_status(as_json=True, client_timeout=self._timeout)
        except InferenceServerException:
            return
        for name in status.get("regions", {}):
            pid = shm._pid_of(name)
            if pid is not None and not shm._alive(pid):
                try:
                    self._client.unregister_cuda_shared_memory(name, client_timeout=self._timeout)
                except InferenceServerException:
                    pass
