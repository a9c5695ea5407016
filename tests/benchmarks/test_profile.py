"""The profile tables: py-spy raw stacks read into CPU seconds per stage and part, by the source line a sample
points at (the C call a Python line makes is charged to it)."""
from __future__ import annotations

from swapstream.benchmarks.profile import JOB_RATE, SERVER_RATE, job_table, markdown, server_table

DECODE = "swapstream/pipelines/decode.py"
DECODE_RGB = "swapstream/pipelines/decode_rgb.py"


def _line_of(root, path: str, text: str) -> int:
    return next(i for i, line in enumerate((root / path.removeprefix("swapstream/")).read_text().splitlines(), 1)
                if text in line)


def test_job_samples_go_to_their_stage_and_part(tmp_path):
    from swapstream.benchmarks.profile import ROOT

    writes = _line_of(ROOT, DECODE, "to_rgb.write(")
    convert = _line_of(ROOT, DECODE_RGB, "self._reformatter.reformat(")
    decoding = _line_of(ROOT, DECODE, "for frame in container.decode(stream)")
    thread = "thread (1): Thread-1 (work);run (threading.py:975);"
    raw = tmp_path / "job.raw"
    raw.write_text("\n".join([
        f"{thread}VideoReader._pyav_batches ({DECODE}:{writes});RgbWriter.write ({DECODE_RGB}:{convert}) 30",
        f"{thread}VideoReader._pyav_batches ({DECODE}:{decoding}) 20",
        f"{thread}FaceSwapper.detect (swapstream/services/engine/swapper.py:76);Downscaler.__call__ "
        "(swapstream/pipelines/resize.py:40);BatchedPipeline.run_into (swapstream/pipelines/align.py:200);"
        "Pipeline.feed_input (nvidia/dali/pipeline.py:1200);Pipeline._feed_input (nvidia/dali/pipeline.py:1259) 7",
        f"{thread}SwapstreamClient.swap (swapstream/services/triton/client.py:90);"
        "InferInput.set_data_from_numpy (tritonclient/grpc/_infer_input.py:159) 5",
        "thread (2): <native> 3",
    ]) + "\n")

    table = job_table(raw)

    assert table["decode", "YUV->RGB conversion"] == 30 / JOB_RATE
    assert table["decode", "video decode (libavcodec)"] == 20 / JOB_RATE
    assert table["detect", "copy into DALI"] == 7 / JOB_RATE
    assert table["swap", "gRPC copy"] == 5 / JOB_RATE
    assert round(sum(table.values()), 9) == 65 / JOB_RATE  # every sample counted once, the native thread too
    assert "| decode | YUV->RGB conversion | 0.30 | 46.2% |" in markdown(table, "job stage")


def test_server_samples_go_to_their_model_and_part(tmp_path):
    stub = ('process 1:"tritonserver";process 2:"/x/triton_python_backend_stub /r/yunet/1/model.onnx '
            'swapstream_ab_cd 67108864 67108864 1 /x/python 336 yunet_0_0 /x/onnxruntime"')
    raw = tmp_path / "server.raw"
    raw.write_text("\n".join([
        f"{stub};thread (3): MainThread;TritonPythonModel.execute (model.py:60);TritonPythonModel._run (model.py:97);"
        "Session.run (onnxruntime/capi/onnxruntime_inference_collection.py:406) 40",
        f"{stub};thread (3): MainThread;TritonPythonModel.execute (model.py:60);TritonPythonModel._respond "
        "(model.py:101) 10",
        f"{stub};thread (3): MainThread 5",
        'process 1:"python -m swapstream.services.triton.reaper";thread (9): MainThread;run (reaper.py:81) 50',
    ]) + "\n")

    table = server_table(raw)

    assert table["yunet", "onnxruntime"] == 40 / SERVER_RATE
    assert table["yunet", "output copy"] == 10 / SERVER_RATE
    assert table["yunet", "stub, no Python frame (messages, shared memory)"] == 5 / SERVER_RATE
    assert round(sum(table.values()), 9) == 55 / SERVER_RATE  # the reaper is not a model


def test_a_facemesh_call_goes_to_the_stage_that_made_it(tmp_path):
    """The mesh swap's facemesh calls are swap time, the follower's are follow time (no marker of their own)."""
    thread = "thread (1): Thread-1 (work);run (threading.py:975);"
    call = ("SwapstreamClient.facemesh (swapstream/services/triton/client.py:100);"
            "InferInput.set_data_from_numpy (tritonclient/grpc/_infer_input.py:159)")
    raw = tmp_path / "job.raw"
    raw.write_text("\n".join([
        f"{thread}MeshSwapper.swap (swapstream/services/engine/swappers/mesh.py:50);{call} 4",
        f"{thread}MeshFollower.follow (swapstream/services/engine/mesh_tracking.py:50);{call} 6",
    ]) + "\n")

    table = job_table(raw)

    assert table["swap", "gRPC copy"] == 4 / JOB_RATE
    assert table["follow", "gRPC copy"] == 6 / JOB_RATE
