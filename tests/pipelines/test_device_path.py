"""The GPU data path's choices, run here without a GPU (pipelines/device.py, the pipelines' inputs, the reader):
where a tensor lives, where each pipeline takes its frames in, when the reader's batches stay on the GPU, and the
clear refusals (device "gpu" without cuda-python or a CUDA GPU, GPU frames to a CPU pipeline). What needs a GPU
(NVDEC batches copied device to device, DALI reading them in place) is in the README's GPU commands."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from nvidia.dali import Pipeline, types
from nvidia.dali.backend import GetCUDADeviceCount, TensorCPU, TensorListCPU

from swapstream.pipelines.align import (Aligner, DeviceError, input_device, pipeline_kwargs, require_device, source,
                                        warp_graph)
from swapstream.pipelines.blend import paste_graph
from swapstream.pipelines.decode import frames_stay_on_device, open_video
from swapstream.pipelines.device import (DeviceFrames, DeviceMemoryError, copy_out_of_dali, device_frames, on_device,
                                         to_host)
from swapstream.pipelines.resize import Downscaler, resize_graph
from tests.helpers.gpu_tensor import GpuTensor
from tests.helpers.media import MEDIA

GPU = GetCUDADeviceCount() > 0
no_gpu_here = pytest.mark.skipif(GPU, reason="a GPU is present: device memory and --device gpu work here")
needs_gpu = pytest.mark.skipif(not GPU, reason="no CUDA GPU here: runs where one is")


def test_where_a_tensor_lives_is_read_from_its_protocols():
    frames = np.zeros((2, 8, 8, 3), np.uint8)
    assert not on_device(frames)                    # numpy: DLPack kDLCPU
    assert not on_device(TensorCPU(frames[0]))      # DALI's host tensor: kDLCPU too
    assert on_device(GpuTensor(frames))             # kDLCUDA
    assert not on_device([frames])


def test_each_pipeline_takes_host_arrays_on_the_cpu_and_gpu_tensors_where_they_are():
    host, gpu = np.zeros((8, 8, 3), np.uint8), GpuTensor(np.zeros((8, 8, 3), np.uint8))
    assert input_device("cpu", host) == "cpu"
    assert input_device("gpu", host) == "cpu"      # moved to the GPU inside the graph, as before
    assert input_device("gpu", gpu) == "gpu"       # no host copy
    with pytest.raises(ValueError, match="built for device 'cpu'.*device 'gpu'.*to_host"):
        input_device("cpu", gpu)


def _fed_on(node) -> str:
    """Where the external source under ``node`` takes its data (its own device, before any ``.gpu()``)."""
    return node.source._spec.OutputDevice(0)


@pytest.mark.parametrize("fed_on", ["cpu", "gpu"])
def test_gpu_graphs_feed_their_frames_where_they_are_and_run_on_the_gpu(fed_on):
    # Defined, not built (no GPU here): DALI places each node when the graph is defined.
    pipe = Pipeline(**pipeline_kwargs("gpu", 4, device_id=0))
    with pipe:
        frames = source("frames", fed_on, "gpu", dtype=types.UINT8, ndim=3, layout="HWC")
        outputs = [resize_graph("gpu", fed_on), warp_graph("gpu", 64, fed_on), *paste_graph("gpu", fed_on)]
    assert frames.device == "gpu" and _fed_on(frames) == fed_on
    assert [out.device for out in outputs] == ["gpu"] * 4
    cpu = Pipeline(**pipeline_kwargs("cpu", 4))
    with cpu:
        host = source("frames", "cpu", "cpu", dtype=types.UINT8, ndim=3, layout="HWC")
    assert host.device == "cpu" and _fed_on(host) == "cpu"


def test_the_readers_batches_stay_on_the_gpu_only_when_asked_on_gpu():
    assert frames_stay_on_device("gpu", True)
    assert not frames_stay_on_device("gpu", False)
    assert not frames_stay_on_device("cpu", False)
    with pytest.raises(ValueError, match="only with device 'gpu'"):
        frames_stay_on_device("cpu", True)
    with pytest.raises(ValueError, match="only with device 'gpu'"):  # refused before the file is even opened
        open_video("/nonexistent.mp4", "cpu", on_device=True)


@pytest.mark.parametrize("device", ["cpu", "gpu"])
def test_a_swap_asks_the_reader_for_batches_on_the_gpu_exactly_on_gpu(device):
    from swapstream.services.engine.offline import SwapOptions
    from swapstream.services.engine.trim import open_part
    clip = MEDIA / "vid03_square_480_expressions.mp4"
    whole, _ = open_part(clip, SwapOptions(device=device))
    part, plan = open_part(clip, SwapOptions(device=device, start=1.0, end=2.0, fps=10))  # PyAV's kept frames
    assert plan.indices is not None and part.decoder == "pyav"
    assert whole.on_device is part.on_device is (device == "gpu")


def test_gpu_frames_handed_to_cpu_pipelines_are_refused_clearly():
    gpu = GpuTensor(np.zeros((1, 64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="built for device 'cpu'"):
        Aligner(32, "cpu")(gpu, np.zeros(1), np.eye(2, 3)[None])
    with pytest.raises(ValueError, match="built for device 'cpu'"):
        Downscaler(16, "cpu")(gpu)
    assert gpu.host_copies == 0  # refused, not silently copied
    with pytest.raises(TypeError, match="must be a DeviceFrames"):
        device_frames(gpu)


def test_the_one_host_copy():
    frames = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    assert to_host(frames) is frames
    gpu = GpuTensor(frames)
    np.testing.assert_array_equal(to_host(gpu), frames)
    assert gpu.host_copies == 1


def test_a_dali_batch_is_copied_out_to_an_address():
    # The same call copies a TensorListGPU into DeviceFrames; on the host it can run here.
    frames = np.arange(2 * 3 * 4 * 3, dtype=np.uint8).reshape(2, 3, 4, 3)
    out = np.zeros((3, 3, 4, 3), np.uint8)
    copy_out_of_dali(TensorListCPU(frames), out[1:].ctypes.data)  # at an offset, as run_on_device's chunks
    np.testing.assert_array_equal(out[1:], frames)
    assert not out[0].any()


@no_gpu_here
def test_device_memory_without_a_gpu_is_a_clear_error():
    with pytest.raises(DeviceMemoryError, match="is a CUDA GPU visible.*--device cpu"):
        DeviceFrames((2, 8, 8, 3))


@no_gpu_here
def test_device_gpu_without_a_gpu_is_refused_at_start():
    with pytest.raises(DeviceError, match="DALI sees no CUDA GPU.*--device cpu"):
        require_device("gpu")
    assert require_device("cpu") == "cpu"


def test_device_gpu_without_cuda_python_is_refused_at_start_saying_what_to_install():
    # cuda-python made unimportable the documented way (None in sys.modules): as if it were not installed.
    code = ("import sys; sys.modules['cuda.bindings'] = sys.modules['cuda.bindings.runtime'] = None\n"
            "from swapstream.pipelines.align import DeviceError, require_device\n"
            "from swapstream.services.triton import cuda_memory\n"
            "assert require_device('cpu') == 'cpu'\n"
            "for check in (lambda: require_device('gpu'), cuda_memory.cuda_shared_memory):\n"
            "    try:\n        check()\n    except (DeviceError, ImportError) as error:\n        print(error)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    refused, no_module = done.stdout.splitlines()
    assert "cuda-python is not installed" in refused and "swapstream[gpu]" in refused and "--device cpu" in refused
    assert "needs the Python package cuda-python" in no_module and "swapstream[gpu]" in no_module


# ---- on a GPU only (skipped here) ----------------------------------------------------------------------------------


@needs_gpu
@pytest.mark.parametrize("decoder", ["dali", "pyav"])
def test_on_a_gpu_the_readers_batches_stay_on_the_device_with_the_host_paths_pixels(decoder):
    clip = MEDIA / "vid03_square_480_expressions.mp4"
    on_host = list(open_video(clip, "gpu", batch_size=8, decoder=decoder))
    kept = list(open_video(clip, "gpu", batch_size=8, decoder=decoder, on_device=True))
    assert [b.start for b in kept] == [b.start for b in on_host]
    for device_batch, host_batch in zip(kept, on_host):
        assert isinstance(device_batch.frames, DeviceFrames)
        np.testing.assert_array_equal(to_host(device_batch.frames), host_batch.frames)
        np.testing.assert_array_equal(device_batch.pts, host_batch.pts)
    frames, host = kept[0].frames, on_host[0].frames
    for key in (slice(1, 3), [0, 2, 5], np.array([4])):  # views and gathers, as numpy indexes
        np.testing.assert_array_equal(to_host(frames[key]), host[key])


@needs_gpu
def test_on_a_gpu_the_downscale_and_alignment_read_device_frames_in_place():
    clip = MEDIA / "vid03_square_480_expressions.mp4"
    batch = next(iter(open_video(clip, "gpu", batch_size=4, on_device=True)))
    host = to_host(batch.frames)
    downscaler = Downscaler(240, "gpu")
    small = downscaler(batch.frames)
    assert isinstance(small, DeviceFrames)  # stays on the GPU for Triton
    np.testing.assert_array_equal(to_host(small), downscaler(host))
    aligner = Aligner(128, "gpu")
    index = np.array([0, 3, 1])
    matrices = np.array([[[0.5, 0.0, -20.0], [0.0, 0.5, -10.0]], [[0.4, 0.1, 0.0], [-0.1, 0.4, 5.0]],
                         [[1.0, 0.0, -300.0], [0.0, 1.0, -300.0]]])
    # Whole frames on the device, box cuts on the host: the same crops within a level (as the CPU test of the cut).
    diff = np.abs(aligner(batch.frames, index, matrices).astype(int) - aligner(host, index, matrices))
    assert diff.max() <= 1
