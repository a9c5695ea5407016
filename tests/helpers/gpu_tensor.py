"""A tensor that says it is on the GPU, for choosing paths on a machine without one.

It exposes exactly the protocols the choices read (CuPy's: ``__dlpack_device__`` saying kDLCUDA,
``__cuda_array_interface__`` for shape and type, ``get`` for the copy to the host); its memory is really host memory,
so nothing may read it as device memory: tests use it only where the path chosen for a GPU tensor needs no GPU (the
choice itself, the plan of a call, the one copy to the host for a server elsewhere), and count the host copies.
"""
from __future__ import annotations

import numpy as np

from swapstream.pipelines.device import DLPACK_CUDA


class GpuTensor:
    def __init__(self, array: np.ndarray):
        self._array = np.ascontiguousarray(array)
        self.shape, self.dtype = self._array.shape, self._array.dtype
        self.host_copies = 0
        self.__cuda_array_interface__ = {"shape": self.shape, "typestr": self.dtype.str,
                                         "data": (self._array.ctypes.data, False), "version": 2}

    def __dlpack_device__(self) -> tuple[int, int]:
        return DLPACK_CUDA, 0

    def __len__(self) -> int:
        return self.shape[0]

    def get(self) -> np.ndarray:
        self.host_copies += 1
        return self._array.copy()
