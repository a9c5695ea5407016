"""Which way each input goes to Triton (services/triton/shared_memory.py ``transport``, cuda_memory.py), run here
without a GPU: by where the tensor lives and where the server is; a GPU tensor planned into a CUDA region; to a server
elsewhere, or when no CUDA region can be made, the call goes in the message with one host copy and the session's real
Triton gives the same answer as for the host array. CUDA regions themselves need a GPU (README, GPU commands)."""
from __future__ import annotations

import logging

import numpy as np
import pytest
from nvidia.dali.backend import GetCUDADeviceCount

from swapstream.services.triton import cuda_memory
from swapstream.services.triton import shared_memory as shm
from swapstream.services.triton.balancer import TritonPool
from swapstream.services.triton.client import SwapstreamClient
from tests.helpers.gpu_tensor import GpuTensor
from tests.helpers.media import read_rgb

GPU = GetCUDADeviceCount() > 0
LARGE = np.zeros((1, 256, 256, 3), np.uint8)   # 196 KB: over shm.MIN_BYTES
SMALL = np.zeros((4,), np.int32)


@pytest.mark.parametrize("value, local, gpu_memory, way", [
    (LARGE, True, True, "system"),           # a host array keeps system shared memory, whatever the device
    (LARGE, False, True, "message"),
    (SMALL, True, True, "message"),          # small: a copy into a region would save nothing
    (GpuTensor(LARGE), True, True, "cuda"),
    (GpuTensor(SMALL), True, True, "cuda"),  # on the GPU any size: else it would be copied to the host
    (GpuTensor(LARGE), False, True, "message"),
    (GpuTensor(LARGE), True, False, "message"),
])
def test_each_tensor_goes_the_way_its_place_and_the_servers_choose(value, local, gpu_memory, way):
    assert shm.transport(value, local, gpu_memory) == way


def test_a_call_plans_gpu_inputs_back_to_back_in_a_cuda_region_and_host_ones_as_before():
    images, extra = GpuTensor(np.zeros((2, 64, 64, 3), np.uint8)), GpuTensor(np.zeros((2, 3), np.float32))
    layout = shm.Layout.plan({"IMAGES": images, "BIG": LARGE, "SIZE": SMALL, "EXTRA": extra}, ["OUT"])
    assert layout.on_gpu == {"IMAGES": (0, images._array.nbytes), "EXTRA": (images._array.nbytes, 24)}
    assert layout.gpu_nbytes == images._array.nbytes + 24
    assert layout.in_region == {"BIG": 0} and layout.nbytes == LARGE.nbytes
    # Without a CUDA region (a server elsewhere), each GPU input is copied to the host once, into the message.
    inputs, _ = layout.request(None, None)
    assert [t.name() for t in inputs] == ["IMAGES", "BIG", "SIZE", "EXTRA"]
    assert inputs[0].shape() == [2, 64, 64, 3] and inputs[0].datatype() == "UINT8"
    assert inputs[3].datatype() == "FP32"
    assert images.host_copies == extra.host_copies == 1


def test_local_servers_get_cuda_memory_beside_system_memory_and_others_neither(triton):
    assert cuda_memory.cuda_shared_memory().create_shared_memory_region  # cuda-python imports here, no GPU needed
    for local, shared, kept in ((True, True, True), (False, True, False), (True, False, False)):
        pool = TritonPool(triton.grpc_url, local=lambda address: local, shared_memory=shared)
        try:
            (server,) = pool.servers()
            assert isinstance(server.gpu_memory, cuda_memory.CudaServerMemory) is kept
            assert isinstance(server.memory, shm.ServerMemory) is kept
        finally:
            pool._release()


@pytest.fixture(scope="module")
def frame():
    return read_rgb("img01_single_frontal_obama.jpg")


@pytest.mark.parametrize("local", [False, pytest.param(True, marks=pytest.mark.skipif(
    GPU, reason="a GPU is present: the region is made (see the GPU test below)"))],
    ids=["server elsewhere", "local, no CUDA device"])
def test_gpu_frames_reach_detect_with_the_same_answer(triton, client, frame, local, caplog):
    pool = TritonPool(triton.grpc_url, local=lambda address: local)
    own = SwapstreamClient(triton.grpc_url, pool=pool)
    try:
        frames = np.ascontiguousarray(frame[None, :480, :640])
        expected = client.detect(frames)
        gpu = GpuTensor(frames)
        with caplog.at_level(logging.WARNING, "swapstream.triton"):
            got = own.detect(gpu)
        for name in ("boxes", "scores", "landmarks", "frame_index"):
            np.testing.assert_array_equal(getattr(got, name), getattr(expected, name))
        assert len(expected) > 0 and gpu.host_copies == 1
        if local:  # CUDA shared memory was tried and could not be made: said, and the call went in the message
            assert "GPU memory" in caplog.text
            assert pool.servers()[0].gpu_memory.names() == []
    finally:
        pool._release()


@pytest.mark.skipif(not GPU, reason="no CUDA GPU here: runs where one is")
def test_on_a_gpu_frames_on_the_device_go_to_detect_by_cuda_shared_memory(triton, client, frame):
    from swapstream.pipelines.device import DeviceFrames
    from swapstream.pipelines.resize import Downscaler
    pool = TritonPool(triton.grpc_url)
    own = SwapstreamClient(triton.grpc_url, pool=pool)
    try:
        frames = np.ascontiguousarray(frame[None, :480, :640])
        on_gpu = Downscaler(640, "gpu")(_on_device(frames))  # small enough: the device frames themselves
        expected = client.detect(frames)
        got = own.detect(on_gpu)
        for name in ("boxes", "scores", "landmarks", "frame_index"):
            np.testing.assert_array_equal(getattr(got, name), getattr(expected, name))
        assert pool.servers()[0].gpu_memory.names()  # this thread's CUDA region, registered and kept
        assert isinstance(on_gpu, DeviceFrames)
    finally:
        pool._release()


@pytest.mark.skipif(not GPU, reason="no CUDA GPU here: runs where one is")
def test_on_a_gpu_cuda_regions_grow_per_thread_and_are_unregistered_at_close(triton, frame):
    import tritonclient.grpc as grpcclient
    pool = TritonPool(triton.grpc_url)
    own = SwapstreamClient(triton.grpc_url, pool=pool)
    memory = pool.servers()[0].gpu_memory
    try:
        small = np.ascontiguousarray(frame[None, :240, :320])
        own.detect(_on_device(small))
        (first,) = memory.names()
        own.detect(_on_device(np.ascontiguousarray(np.repeat(frame[None, :480, :640], 4, axis=0))))
        (second,) = memory.names()  # a bigger batch: a bigger region, the first given back
        assert second != first
    finally:
        pool._release()
    with grpcclient.InferenceServerClient(triton.grpc_url) as admin:
        left = set(admin.get_cuda_shared_memory_status(as_json=True).get("regions", {}))
    assert not left & {first, second}


def _on_device(frames: np.ndarray):
    """Host frames copied into device memory of their own, as the reader's DeviceFrames are."""
    import cuda.bindings.runtime as cudart
    from swapstream.pipelines.device import DeviceFrames
    out = DeviceFrames(frames.shape)
    (error,) = cudart.cudaMemcpy(out.pointer, frames.ctypes.data, out.nbytes,
                                 cudart.cudaMemcpyKind.cudaMemcpyHostToDevice)
    assert error == cudart.cudaError_t.cudaSuccess, error
    return out
