"""Frames kept on the GPU between DALI pipelines and Triton (device "gpu"): where a tensor lives, the batch type that
holds frames in device memory, and the one copy to the host where the host needs them.

A DALI pipeline's outputs live in buffers its next run overwrites, and the offline engine decodes a few batches
ahead: so a batch that stays on the device is copied once, device to device, into memory of its own
(``DeviceFrames``, allocated with cuda-python's ``cudaMalloc``, freed with the object). It exposes the two protocols
its consumers read: ``__cuda_array_interface__`` (DALI's ``fn.external_source(device="gpu")`` takes it as it is) and
``__dlpack__`` (tritonclient's ``set_shared_memory_region_from_dlpack`` copies it into a CUDA shared-memory region).

What is a device tensor is decided by the protocols alone (``on_device``), so DALI's ``TensorGPU``, CuPy arrays and
``DeviceFrames`` are all sent the same way; numpy arrays (DLPack device kDLCPU) are host tensors.
"""
from __future__ import annotations

import ctypes

import numpy as np
from nvidia.dali.backend import TensorGPU, TensorListGPU

# DLPack device types (dlpack.h): memory a CUDA kernel reads as it is.
DLPACK_CUDA, DLPACK_CUDA_MANAGED = 2, 13
DLPACK_ON_DEVICE = (DLPACK_CUDA, DLPACK_CUDA_MANAGED)
GPU_EXTRA = "pip install 'swapstream[gpu]' (cuda-python, for device memory and CUDA shared memory to Triton)"


class DeviceMemoryError(RuntimeError):
    """Device memory could not be had (no CUDA device or driver, cuda-python missing, out of memory)."""


def on_device(value) -> bool:
    """Whether ``value`` is a tensor in GPU memory (a DLPack CUDA device, or only a CUDA array interface)."""
    if isinstance(value, np.ndarray):
        return False
    if isinstance(value, TensorListGPU):  # a DALI batch: neither protocol, but on the GPU all the same
        return True
    dlpack_device = getattr(value, "__dlpack_device__", None)
    if dlpack_device is not None:
        return int(dlpack_device()[0]) in DLPACK_ON_DEVICE
    return hasattr(value, "__cuda_array_interface__")


def device_shape(value) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of a device tensor, from its CUDA array interface."""
    interface = getattr(value, "__cuda_array_interface__", None)
    if interface is None:
        raise TypeError(f"{type(value).__name__} is on the GPU but has no __cuda_array_interface__ to read its shape "
                        "from; hand over a DALI TensorGPU (a TensorListGPU's as_tensor()), a CuPy array or a "
                        "DeviceFrames")
    return tuple(int(d) for d in interface["shape"]), np.dtype(interface["typestr"])


def device_frames(value) -> "DeviceFrames":
    """``value``, a batch of frames on the GPU, as the ``DeviceFrames`` the pipelines read frame by frame."""
    if isinstance(value, DeviceFrames):
        return value
    raise TypeError(f"a batch of frames on the GPU must be a DeviceFrames (what the reader yields on device 'gpu'), "
                    f"got a {type(value).__name__}; wrap it with DeviceFrames.from_dali or copy it to the host")


def to_host(value) -> np.ndarray:
    """``value`` as a numpy array: a host array as it is, a device tensor copied to the host once."""
    if not on_device(value):
        return np.asarray(value)
    if isinstance(value, DeviceFrames):
        return value.host()
    if hasattr(value, "as_cpu"):  # DALI TensorGPU / TensorListGPU
        host = value.as_cpu()
        return np.array(host.as_array() if hasattr(host, "as_array") else host, copy=True)
    if hasattr(value, "get"):  # CuPy
        return value.get()
    raise TypeError(f"cannot copy a {type(value).__name__} from the GPU to the host; hand over a DALI TensorGPU, a "
                    "CuPy array or a DeviceFrames")


def copy_out_of_dali(tensor_list, address: int) -> None:
    """Copies a dense DALI TensorList (or Tensor) to the memory at ``address`` (device memory for a GPU one, host for
    a CPU one), blocking until it is there. DALI reads the address from a ``ctypes.c_void_p`` only (a bare int
    crashes the process)."""
    tensor_list.copy_to_external(ctypes.c_void_p(address))


def cuda_runtime():
    """cuda-python's CUDA runtime module (DeviceMemoryError without cuda-python)."""
    try:
        import cuda.bindings.runtime as cudart
    except ImportError as error:
        raise DeviceMemoryError(f"frames kept on the GPU need cuda-python: {GPU_EXTRA}") from error
    return cudart


def _checked(cudart, result, what: str):
    error, *values = result
    if error != cudart.cudaError_t.cudaSuccess:
        _, name = cudart.cudaGetErrorName(error)
        hint = ("the GPU is out of memory: use a smaller --batch-size"
                if error == cudart.cudaError_t.cudaErrorMemoryAllocation else
                "is a CUDA GPU visible to this process, with its driver? nvidia-smi lists it; else use --device cpu")
        raise DeviceMemoryError(f"{what} failed: {name.decode() if isinstance(name, bytes) else name} ({hint})")
    return values[0] if len(values) == 1 else values


class DeviceFrames:
    """A batch of frames [n, H, W, C] uint8 in GPU memory this object owns (freed when it goes)."""

    def __init__(self, shape: tuple[int, ...], device_id: int = 0, dtype=np.uint8, *,
                 viewing: tuple["DeviceFrames", int] | None = None):
        """``viewing``: (a batch, a byte offset into it): frames of that batch's memory (kept alive), not new memory."""
        self.shape = tuple(int(d) for d in shape)
        self.dtype = np.dtype(dtype)
        self.device_id = device_id
        self.nbytes = int(np.prod(self.shape)) * self.dtype.itemsize
        self._cudart = cuda_runtime()
        self._owner = viewing[0] if viewing else None
        if viewing:
            self.pointer = viewing[0].pointer + viewing[1]
            return
        _checked(self._cudart, self._cudart.cudaSetDevice(device_id), f"selecting CUDA device {device_id}")
        self.pointer = int(_checked(self._cudart, self._cudart.cudaMalloc(max(self.nbytes, 1)),
                                    f"allocating {self.nbytes} bytes on CUDA device {device_id}"))

    @classmethod
    def from_dali(cls, tensor_list, device_id: int = 0, shape: tuple[int, ...] | None = None) -> "DeviceFrames":
        """A copy (device to device) of a dense DALI ``TensorListGPU``; ``shape`` the copy's (default: the samples'
        stacked, [samples, *sample shape])."""
        samples = tensor_list.shape()
        frames = cls(shape or (len(samples), *samples[0]), device_id)
        if frames.nbytes:
            copy_out_of_dali(tensor_list, frames.pointer)
        return frames

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> "DeviceFrames":
        """Frames by a slice (a view: no copy) or by a list of indices (consecutive ones a view, others gathered
        device to device into frames of their own), as numpy indexes a batch."""
        picked = np.arange(len(self))[key]
        if picked.ndim != 1:
            raise TypeError(f"DeviceFrames take a slice or a list of frame indices, not {key!r}")
        step = self.nbytes // max(len(self), 1)
        if len(picked) == 0 or (np.diff(picked) == 1).all():
            first = int(picked[0]) if len(picked) else 0
            return DeviceFrames((len(picked), *self.shape[1:]), self.device_id, self.dtype,
                                viewing=(self, first * step))
        out = DeviceFrames((len(picked), *self.shape[1:]), self.device_id, self.dtype)
        for row, index in enumerate(picked):
            _checked(self._cudart, self._cudart.cudaMemcpy(out.pointer + row * step, self.pointer + int(index) * step,
                                                           step, self._cudart.cudaMemcpyKind.cudaMemcpyDeviceToDevice),
                     "gathering frames on the GPU")
        return out

    @property
    def __cuda_array_interface__(self) -> dict:
        return {"shape": self.shape, "typestr": self.dtype.str, "data": (self.pointer, False), "version": 2}

    def __dlpack_device__(self) -> tuple[int, int]:
        return DLPACK_CUDA, self.device_id

    def __dlpack__(self, stream=None):
        # DALI's tensor views this memory (no copy) and keeps this object alive as long as the capsule lives.
        return TensorGPU(self, "", self.device_id).__dlpack__(stream)

    def sample(self, index: int) -> "_Sample":
        """Frame ``index`` as a device tensor of its own shape, viewing this batch's memory (no copy)."""
        if not 0 <= index < len(self):
            raise IndexError(f"frame {index} of a batch of {len(self)}")
        step = self.nbytes // len(self)
        return _Sample(self, self.pointer + index * step, self.shape[1:])

    def samples(self) -> list["_Sample"]:
        return [self.sample(i) for i in range(len(self))]

    def host(self) -> np.ndarray:
        """The frames copied to the host (the one copy, where the host needs them: the encoder, the CPU swapper)."""
        out = np.empty(self.shape, self.dtype)
        if self.nbytes:
            _checked(self._cudart, self._cudart.cudaMemcpy(out.ctypes.data, self.pointer, self.nbytes,
                                                           self._cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost),
                     "copying frames from the GPU")
        return out

    def __del__(self):
        pointer = getattr(self, "pointer", None)
        if pointer and getattr(self, "_owner", None) is None:
            self._cudart.cudaFree(pointer)
            self.pointer = 0


class _Sample:
    """One frame of a ``DeviceFrames`` (keeps the batch alive while it is read)."""

    def __init__(self, batch: DeviceFrames, pointer: int, shape: tuple[int, ...]):
        self._batch, self.shape, self.dtype = batch, shape, batch.dtype
        self.__cuda_array_interface__ = {"shape": shape, "typestr": batch.dtype.str, "data": (pointer, False),
                                         "version": 2}

    def __dlpack_device__(self) -> tuple[int, int]:
        return DLPACK_CUDA, self._batch.device_id
