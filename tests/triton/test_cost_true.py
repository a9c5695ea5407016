"""Cost-true stand-ins: the published architectures with generated weights, built at a reduced width here
(same graph, fewer channels); the full-size models only in the test marked slow (``pytest -m slow``)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from swapstream.services.triton import batching, costtrue, repository, standins
from swapstream.services.triton.costtrue import cost
from swapstream.services.triton.model_store import check_io, load_manifest
from swapstream.services.triton.onnx_graph import Graph

WIDTH = 1 / 16
MANIFEST = load_manifest()


@pytest.fixture(scope="module")
def small():
    return {key: costtrue.build(MANIFEST[key], WIDTH) for key in costtrue.BUILDERS}


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _faces(shape, seed: int) -> np.ndarray:
    """Normalised face-like input: a smooth random image in the networks' input range."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(-1.5, 1.5, shape[:2] + [8, 8]).astype(np.float32)
    return np.kron(coarse, np.ones((shape[2] // 8, shape[3] // 8), np.float32)) + \
        rng.normal(0, 0.1, shape).astype(np.float32)


def _embedding(seed: int) -> np.ndarray:
    e = np.random.default_rng(seed).standard_normal((1, 512)).astype(np.float32)
    return e / np.linalg.norm(e)


@pytest.mark.parametrize("key", sorted(costtrue.BUILDERS))
def test_the_real_files_io_contract(tmp_path, small, key):
    path = tmp_path / MANIFEST[key].file
    onnx.save(small[key], str(path))
    check_io(MANIFEST[key], path)  # names, dtypes, ranks, fixed batch of 1 exactly where the manifest has it
    assert standins.is_standin(path) and costtrue.is_cost_true(path)


def test_swapper_output_is_an_image_in_0_1_and_depends_on_face_and_identity(small):
    run = _session(small["simswap_256"])
    target, source = (s.name for s in MANIFEST["simswap_256"].inputs)
    face, other_face = _faces([1, 3, 256, 256], 1), _faces([1, 3, 256, 256], 2)
    out = run.run(None, {target: face, source: _embedding(1)})[0]
    assert out.shape == (1, 3, 256, 256) and np.isfinite(out).all()
    assert out.min() >= 0.0 and out.max() <= 1.0 and out.std() > 0.01
    other_identity = run.run(None, {target: face, source: _embedding(2)})[0]
    other_target = run.run(None, {target: other_face, source: _embedding(1)})[0]
    assert np.abs(other_identity - out).mean() > 1e-3 and np.abs(other_target - out).mean() > 1e-3


def test_identity_encoder_separates_faces(small):
    run = _session(small["arcface_simswap"])
    a, b = (run.run(None, {"input": _faces([1, 3, 112, 112], seed)})[0][0] for seed in (1, 2))
    assert a.shape == (512,) and np.isfinite(a).all() and np.isfinite(b).all()
    assert a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) < 0.999


def test_restorer_output_stays_in_its_range(small):
    out = _session(small["gfpgan_1.4"]).run(None, {"input": _faces([1, 3, 512, 512], 1)})[0]
    assert out.shape == (1, 3, 512, 512) and np.isfinite(out).all()
    assert np.abs(out).max() <= 1.0 and out.std() > 1e-3  # the real output is [-1,1]; callers clip


def test_parser_scores_every_pixel_for_19_classes(small):
    out = _session(small["bisenet"]).run(None, {"input": _faces([2, 3, 512, 512], 1)})[0]
    assert out.shape == (2, 19, 512, 512) and np.isfinite(out).all()
    assert len(np.unique(out.argmax(axis=1))) > 1


def test_cost_counts_a_hand_counted_graph():
    g = Graph("tiny")
    x = g.input("x", "float32", [1, 3, 8, 8])
    conv = g.op("Conv", x, g.const(np.ones((4, 3, 3, 3))), g.const(np.zeros(4)), kernel_shape=[3, 3],
                pads=[1, 1, 1, 1], strides=[2, 2])                              # -> [1,4,4,4]
    grouped = g.op("Conv", conv, g.const(np.ones((4, 2, 1, 1))), kernel_shape=[1, 1], group=2)
    flat = g.op("Flatten", grouped, axis=1)                                     # [1,64]
    y = g.op("Gemm", flat, g.const(np.ones((5, 64))), g.const(np.zeros(5)), transB=1)
    g.output(y, "y", "float32", [1, 5])
    counted = cost.cost(g.model())
    assert counted.params == (4 * 3 * 9 + 4) + 4 * 2 + (5 * 64 + 5)
    assert counted.macs == 4 * 4 * 4 * (3 * 9) + 4 * 4 * 4 * 2 + 5 * 64


def test_cost_counts_modulated_convolutions_whose_weights_are_computed(small):
    """GFPGAN's export form and its batched rewrite hold the same weights and do the same convolutions."""
    folded = small["gfpgan_1.4"]
    unfolded = batching.dynamic_batch(folded)
    assert cost.parameters(folded) == cost.parameters(unfolded)
    conv_macs = cost.macs(unfolded) - cost.macs(folded)
    assert 0 < conv_macs < 0.01 * cost.macs(folded)  # only the per-sample demodulation MatMuls differ


@pytest.mark.parametrize("key", ["simswap_256", "arcface_simswap"])
def test_the_batch_rewrite_gives_k_single_runs(small, key):
    original = small[key]
    assert batching.fixed_batch_one(original)
    rewritten = batching.dynamic_batch(original)
    feeds = {i.name: np.zeros([3] + i.shape[1:], np.float32) for i in _session(original).get_inputs()}
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        _session(original).run(None, feeds)  # the export really refuses a batch
    assert _session(rewritten).run(None, feeds)[0].shape[0] == 3
    assert batching.batch_matches(original, rewritten, batch=3)


def test_the_restorer_folds_the_batch_and_the_rewrite_unfolds_it(small):
    folded = small["gfpgan_1.4"]
    assert batching.folded_batch(folded) and batching.fixed_batch_one(folded)
    unfolded = batching.dynamic_batch(folded)
    assert not batching.folded_batch(unfolded)  # every modulated convolution now has its weights as a constant
    assert batching.batch_matches(folded, unfolded, batch=3)


def test_a_computed_weight_convolution_of_another_form_is_refused():
    g = Graph("computed_weight")
    x = g.input("x", "float32", [1, 2, 4, 4])
    w = g.op("Relu", g.const(np.ones((2, 2, 1, 1))))  # computed, but not a modulation
    g.output(g.op("Conv", x, w, kernel_shape=[1, 1]), "y", "float32", [1, 2, 4, 4])
    model = g.model()
    assert batching.folded_batch(model) and batching.dynamic_batch(model) is None


def test_repository_serves_cost_true_files_batched_where_verified(tmp_path):
    weights = tmp_path / "weights"
    costtrue.write(MANIFEST, weights, width=WIDTH)
    sources = {s.model: s for s in repository.build_repository(
        tmp_path / "repo", [weights, repository.shared_dir() / "models"])}
    assert all(sources[m].kind == "cost-true" for m in ("simswap", "arcface", "gfpgan", "bisenet"))
    for model in ("simswap", "arcface", "gfpgan"):
        assert "batch made dynamic" in sources[model].detail
        served = onnx.load(str(tmp_path / "repo" / model / "1" / "model.onnx"))
        assert served.graph.input[0].type.tensor_type.shape.dim[0].dim_param == batching.BATCH


def test_cli_writes_cost_true_models_and_refuses_unknown_names(tmp_path):
    cli = [sys.executable, "-m", "swapstream.services.cli", "models", "standins", "--cost-true", "--out", str(tmp_path)]
    done = subprocess.run(cli + ["bisenet"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    model = onnx.load(str(tmp_path / MANIFEST["bisenet"].file))
    assert {p.key: p.value for p in model.metadata_props}[costtrue.KIND_KEY] == costtrue.KIND
    assert cost.parameters(model) * 4 == pytest.approx(MANIFEST["bisenet"].bytes, rel=0.1)
    refused = subprocess.run(cli + ["yunet"], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "no cost-true model for yunet" in refused.stderr


@pytest.mark.slow
def test_full_size_models_match_the_real_files_cost(tmp_path, monkeypatch):
    """``--models cost-true`` at full width: built into the models cache, served batched where verified;
    parameters against the real files' bytes (float32), MACs against the published figures where there is
    one, one finite run each."""
    monkeypatch.setenv("SWAPSTREAM_MODELS", str(tmp_path / "cache"))
    weight_dirs = repository.weight_dirs_for(repository.COST_TRUE)
    folder = weight_dirs[0]
    assert folder == costtrue.default_dir() and folder.is_relative_to(tmp_path)
    sources = {s.model: s for s in repository.build_repository(tmp_path / "repo", weight_dirs)}
    assert sources["yunet"].kind == "real"
    assert all("batch made dynamic" in sources[m].detail for m in ("simswap", "arcface", "gfpgan"))
    counted = {key: cost.cost(onnx.load(str(folder / MANIFEST[key].file))) for key in costtrue.BUILDERS}
    for key in ("simswap_256", "gfpgan_1.4", "bisenet"):
        assert counted[key].params * 4 == pytest.approx(MANIFEST[key].bytes, rel=0.1), key
    # SimSwap's ArcFace: the file holds ~52.4 M floats; the ResNet-50 IR written here has insightface's
    # published 43.6 M parameters and 6.3 G MACs at 112x112 (see the README on the gap).
    assert counted["arcface_simswap"].params == pytest.approx(43.6e6, rel=0.01)
    assert counted["arcface_simswap"].macs == pytest.approx(6.3e9, rel=0.03)
    for key in costtrue.BUILDERS:
        run = ort.InferenceSession(str(folder / MANIFEST[key].file), providers=["CPUExecutionProvider"])
        feeds = {i.name: (_embedding(0) if len(i.shape) == 2 else _faces([1] + i.shape[1:], 0))
                 for i in run.get_inputs()}
        assert np.isfinite(run.run(None, feeds)[0]).all(), key
