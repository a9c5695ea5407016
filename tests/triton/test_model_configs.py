"""Every config is valid for NVIDIA's container too: it parses as Triton's ModelConfig, names only settings the
native ONNX Runtime backend reads, and its tensors match the ONNX graph it will be given."""
from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from swapstream.services.triton import glue, model_store, repository, standins
from swapstream.services.triton.model_store import check_io, load_manifest

CONFIGS = sorted(repository.CONFIG_REPOSITORY.glob("*/config.pbtxt"))
# Parameters the native onnxruntime backend understands (see triton-inference-server/onnxruntime_backend).
NATIVE_ORT_PARAMETERS = {"intra_op_thread_count", "inter_op_thread_count", "execution_mode",
                         "cudnn_conv_algo_search", "gpu_mem_limit", "arena_extend_strategy",
                         "memory.enable_memory_arena_shrinkage", "enable_mem_pattern", "enable_mem_arena"}
ONNX_TO_TRITON = {"float32": "TYPE_FP32", "uint8": "TYPE_UINT8", "int32": "TYPE_INT32", "int64": "TYPE_INT64"}


def parse(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


CONFIG = {path.parent.name: parse(path) for path in CONFIGS}


def dtype_name(config_type: int) -> str:
    return model_config_pb2.DataType.Name(config_type)


@pytest.mark.parametrize("name", sorted(CONFIG))
def test_config_is_portable(name):
    config = CONFIG[name]
    assert config.name == name
    if config.platform == "ensemble":
        assert not config.backend and not config.instance_group
        return
    assert config.backend == "onnxruntime" and not config.platform and not config.runtime
    assert set(config.parameters) <= NATIVE_ORT_PARAMETERS
    assert [group.kind for group in config.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_AUTO]
    assert not config.HasField("optimization") or not config.optimization.execution_accelerators.cpu_execution_accelerator


@pytest.mark.parametrize("name", sorted(n for n, c in CONFIG.items() if c.platform == "ensemble"))
def test_ensemble_steps_are_wired(name):
    ensemble = CONFIG[name]
    produced = {t.name for t in ensemble.input}
    for step in ensemble.ensemble_scheduling.step:
        model = CONFIG[step.model_name]
        assert set(step.input_map) <= {t.name for t in model.input}
        required = {t.name for t in model.input if not t.optional}
        assert required <= set(step.input_map), f"{name}: step {step.model_name} misses inputs"
        for value in step.input_map.values():
            assert value in produced, f"{name}: {value} is consumed before any step produces it"
        assert set(step.output_map) <= {t.name for t in model.output}
        produced |= set(step.output_map.values())
    assert {t.name for t in ensemble.output} <= produced


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("repo")
    repository.build_repository(out, [repository.shared_dir() / "models"])
    return out


@pytest.mark.parametrize("name", sorted(n for n, c in CONFIG.items() if c.platform != "ensemble"))
def test_config_matches_its_onnx_graph(built, name):
    """What the native backend would check: the config's tensors are the graph's, with the same types."""
    graph = onnx.load(str(built / name / "1" / "model.onnx")).graph
    initializers = {i.name for i in graph.initializer}
    graph_inputs = {v.name: v for v in graph.input}
    config = CONFIG[name]
    for tensor in config.input:
        assert tensor.name in graph_inputs
        value = graph_inputs[tensor.name]
        assert ONNX_TO_TRITON[onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type).name] == \
            dtype_name(tensor.data_type)
        assert len(value.type.tensor_type.shape.dim) == len(tensor.dims)
        assert tensor.optional == (tensor.name in initializers)  # optional = has a default in the graph
    assert {v.name for v in graph.input if v.name not in initializers} == {t.name for t in config.input if not t.optional}
    assert {t.name for t in config.output} <= {v.name for v in graph.output}


@pytest.mark.parametrize("key", sorted(standins.BUILDERS))
def test_standins_have_the_real_io(tmp_path, key):
    manifest = load_manifest()
    path = standins.write_standins(manifest, tmp_path, [key])[key]
    check_io(manifest[key], path)
    assert standins.is_standin(path)


def test_network_configs_use_the_manifest_names():
    manifest = model_store.load_manifest()
    for folder, key in repository.NETWORKS.items():
        entry = manifest[key]
        assert [t.name for t in CONFIG[folder].input] == [s.name for s in entry.inputs]
        outputs = {s.name for s in entry.outputs} | ({glue.PARSER_LABELS} if folder in repository.REDUCED else set())
        assert {t.name for t in CONFIG[folder].output} <= outputs
        for tensor, spec in zip(CONFIG[folder].input, entry.inputs):
            assert list(tensor.dims)[1:] == [d for d in spec.shape][1:]


def test_a_corrupt_weight_file_is_refused(tmp_path):
    (tmp_path / "simswap_256.onnx").write_bytes(b"not the model")
    with pytest.raises(repository.RepositoryError, match="simswap_256.onnx.*models fetch simswap_256"):
        repository.build_repository(tmp_path / "repo", [tmp_path, repository.shared_dir() / "models"])


def test_standins_written_by_the_cli_are_used_as_standins(tmp_path):
    standins.write_standins(load_manifest(), tmp_path)
    sources = repository.build_repository(tmp_path / "repo", [tmp_path, repository.shared_dir() / "models"])
    kinds = {s.model: s.kind for s in sources}
    assert kinds["simswap"] == kinds["gfpgan"] == kinds["bisenet"] == kinds["arcface"] == "stand-in"
    assert kinds["yunet"] == "real"


def test_the_parser_is_served_with_its_argmax(built):
    """The repository's bisenet gives the labels the original graph's scores pick, as uint8."""
    import numpy as np
    import onnxruntime

    manifest = load_manifest()
    original = standins.BUILDERS["bisenet"](manifest["bisenet"])
    faces = np.random.default_rng(0).normal(size=(2, 3, 512, 512)).astype(np.float32)
    scores = onnxruntime.InferenceSession(original.SerializeToString()).run(None, {"input": faces})[0]
    served = onnxruntime.InferenceSession(str(built / "bisenet" / "1" / "model.onnx"))
    (labels,) = served.run([glue.PARSER_LABELS], {"input": faces})
    assert labels.dtype == np.uint8 and labels.shape == (2, 512, 512)
    np.testing.assert_array_equal(labels, scores.argmax(axis=1))
    assert len(np.unique(labels)) > 1


def test_the_repository_in_git_holds_configs_only():
    """Weights and converted networks are put beside the configs when a repository is built, never committed."""
    for folder in repository.CONFIG_REPOSITORY.iterdir():
        assert [p.name for p in folder.iterdir()] == ["config.pbtxt"], folder


def test_converted_models_have_configs_and_are_built(tmp_path):
    sources = {s.model: s for s in repository.build_repository(tmp_path / "repo", [repository.shared_dir() / "models"])}
    assert set(repository.CONVERTED) <= set(CONFIG)
    for name in repository.CONVERTED:
        assert sources[name].kind == "converted" and "face_landmark.tflite" in sources[name].detail


def test_the_facemesh_config_has_the_served_graphs_shapes(built):
    """Each tensor's dims, not only its rank: two faces through the built graph give the config's shapes."""
    import numpy as np
    import onnxruntime

    config = CONFIG["facemesh"]
    session = onnxruntime.InferenceSession(str(built / "facemesh" / "1" / "model.onnx"))
    (faces,) = config.input
    outputs = session.run([t.name for t in config.output],
                          {faces.name: np.zeros([2 if d == -1 else d for d in faces.dims], np.uint8)})
    for tensor, value in zip(config.output, outputs):
        assert list(value.shape) == [2 if d == -1 else d for d in tensor.dims], tensor.name
