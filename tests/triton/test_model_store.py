"""swapstream.services.triton.model_store: manifest, verification, resumable download, ONNX I/O check.

No network: a real HTTP server on 127.0.0.1 (free port, own thread) serves small fake model files
and honours (or, on request, ignores) Range requests, counting every byte it sends.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper

from swapstream.services.triton import model_store
from swapstream.services.triton.model_store import (
    FIELDS,
    ModelDownloadError,
    ModelIOError,
    ModelVerificationError,
    check_io,
    fetch,
    fetch_command,
    load_manifest,
    verify,
)

from tests.helpers.media import SHARED  # noqa: E402
YUNET_FILE = SHARED / "models" / "yunet_s_dynamic.onnx"


# ---------------------------------------------------------------------------------------------
# a small Range-capable HTTP server


class _FileServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {}
        self.ignore_range = False
        self.drop_after: int | None = None  # send only this many body bytes, then hang up
        self.bytes_served = 0
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.lock = threading.Lock()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{name}"


class _Handler(BaseHTTPRequestHandler):
    server: _FileServer

    def do_GET(self):
        name = self.path.lstrip("/")
        rng = self.headers.get("Range")
        with self.server.lock:
            self.server.requests.append((name, rng))
        data = self.server.files.get(name)
        if data is None:
            self.send_error(404)
            return
        start = 0
        if rng and not self.server.ignore_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.server.drop_after is not None:
            body = body[: self.server.drop_after]
        with self.server.lock:  # counted before sending, so the client never sees stale counts
            self.server.bytes_served += len(body)
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(autouse=True)
def _no_proxy_for_localhost(monkeypatch):
    # urllib honours http_proxy; the test server must be reached directly
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(var, "127.0.0.1,localhost")


@pytest.fixture
def server():
    srv = _FileServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=5)


# ---------------------------------------------------------------------------------------------
# fake models: real (tiny) ONNX graphs padded to a few hundred KB, so check_io works on them too


def _fake_onnx(seed: int, pad_floats: int = 75_000) -> bytes:
    rng = np.random.default_rng(seed)
    const = helper.make_tensor("c", TensorProto.FLOAT, [1, 4], rng.standard_normal(4).astype(np.float32))
    pad = helper.make_tensor("pad", TensorProto.FLOAT, [pad_floats],
                             rng.standard_normal(pad_floats).astype(np.float32).tobytes(), raw=True)
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "c"], ["y"])], f"fake{seed}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        initializer=[const, pad],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()


def _entry_dict(file: str, data: bytes, url: str, sha256: str | None = None) -> dict:
    return {
        "file": file, "bytes": len(data), "sha256": sha256 or hashlib.sha256(data).hexdigest(),
        "url": url, "license": "test-only", "role": "restorer", "template": "ffhq_512", "size": 512,
        "color": "RGB", "scale": 1 / 255, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
        "output_range": "[-1,1]",
        "inputs": [{"name": "x", "dtype": "float32", "shape": [1, 4]}],
        "outputs": [{"name": "y", "dtype": "float32", "shape": [1, 4]}],
        "notes": "fake model for tests",
    }


@pytest.fixture
def fakes(server, tmp_path):
    """Two served fake models (one pinned by full sha256, one by an 8-digit prefix) + manifest."""
    alpha, beta = _fake_onnx(1), _fake_onnx(2, pad_floats=60_000)
    server.files = {"alpha.onnx": alpha, "beta.onnx": beta}
    models = {
        "alpha": _entry_dict("alpha.onnx", alpha, server.url("alpha.onnx")),
        "beta": _entry_dict("beta.onnx", beta, server.url("beta.onnx"),
                            sha256=hashlib.sha256(beta).hexdigest()[:8]),
    }
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(yaml.safe_dump({"models": models}))
    return manifest, {"alpha": alpha, "beta": beta}


# ---------------------------------------------------------------------------------------------
# fetch


def test_fetch_downloads_and_verifies(fakes, server, tmp_path):
    manifest, data = fakes
    entries = load_manifest(manifest)
    assert entries["alpha"].sha256_is_full and not entries["beta"].sha256_is_full
    dest = tmp_path / "models"

    results = fetch(entries, dest, progress=True)

    assert [r.status for r in results] == ["downloaded", "downloaded"]
    for key, blob in data.items():
        assert (dest / f"{key}.onnx").read_bytes() == blob
    assert server.bytes_served == sum(len(b) for b in data.values())
    assert sorted(p.name for p in dest.iterdir()) == ["alpha.onnx", "beta.onnx"]  # no .part left


def test_second_fetch_downloads_nothing(fakes, server, tmp_path):
    manifest, _ = fakes
    entries = load_manifest(manifest)
    fetch(entries, tmp_path, progress=False)
    served, requests = server.bytes_served, len(server.requests)

    results = fetch(entries, tmp_path, progress=False)

    assert [r.status for r in results] == ["present", "present"]
    assert [r.bytes_downloaded for r in results] == [0, 0]
    assert (server.bytes_served, len(server.requests)) == (served, requests)


def test_resume_requests_only_the_remainder(fakes, server, tmp_path):
    manifest, data = fakes
    entry = load_manifest(manifest)["alpha"]
    have = 100_000
    (tmp_path / "alpha.onnx.part").write_bytes(data["alpha"][:have])

    [result] = fetch([entry], tmp_path, progress=False)

    assert server.requests == [("alpha.onnx", f"bytes={have}-")]
    assert server.bytes_served == len(data["alpha"]) - have == result.bytes_downloaded
    assert (tmp_path / "alpha.onnx").read_bytes() == data["alpha"]
    assert not (tmp_path / "alpha.onnx.part").exists()


def test_server_ignoring_range_restarts_from_zero(fakes, server, tmp_path):
    manifest, data = fakes
    entry = load_manifest(manifest)["alpha"]
    server.ignore_range = True
    # a prefix that is wrong on purpose: appending the full body to it would give a bad file
    (tmp_path / "alpha.onnx.part").write_bytes(b"\xff" * 50_000)

    fetch([entry], tmp_path, progress=False)

    assert server.requests == [("alpha.onnx", "bytes=50000-")]
    assert server.bytes_served == len(data["alpha"])
    assert (tmp_path / "alpha.onnx").read_bytes() == data["alpha"]


def test_interrupted_download_keeps_part_and_resumes(fakes, server, tmp_path):
    manifest, data = fakes
    entry = load_manifest(manifest)["alpha"]
    server.drop_after = 120_000

    with pytest.raises(ModelDownloadError, match="resume"):
        fetch([entry], tmp_path, progress=False)
    assert (tmp_path / "alpha.onnx.part").stat().st_size == 120_000
    assert not (tmp_path / "alpha.onnx").exists()

    server.drop_after = None
    fetch([entry], tmp_path, progress=False)
    assert server.requests[-1] == ("alpha.onnx", "bytes=120000-")
    assert server.bytes_served == len(data["alpha"])
    assert (tmp_path / "alpha.onnx").read_bytes() == data["alpha"]


def test_sha256_mismatch_is_refused(server, tmp_path):
    served, claimed = _fake_onnx(3), _fake_onnx(4)
    assert len(served) == len(claimed)  # same size: only the hash can tell them apart
    server.files = {"gamma.onnx": served}
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(yaml.safe_dump({"models": {"gamma": _entry_dict(
        "gamma.onnx", served, server.url("gamma.onnx"), sha256=hashlib.sha256(claimed).hexdigest())}}))
    dest = tmp_path / "models"

    with pytest.raises(ModelVerificationError) as err:
        fetch(load_manifest(manifest), dest, progress=False)

    message = str(err.value)
    assert "gamma.onnx" in message
    assert hashlib.sha256(claimed).hexdigest() in message  # expected
    assert hashlib.sha256(served).hexdigest() in message  # got
    assert "download was deleted" in message
    assert list(dest.iterdir()) == []  # neither the final file nor the .part


def test_present_but_wrong_file_is_refused_not_overwritten(fakes, server, tmp_path):
    manifest, _ = fakes
    entry = load_manifest(manifest)["alpha"]
    (tmp_path / "alpha.onnx").write_bytes(b"not the model")

    with pytest.raises(ModelVerificationError, match=r"expected: \d+ bytes"):
        fetch([entry], tmp_path, progress=False)
    assert (tmp_path / "alpha.onnx").read_bytes() == b"not the model"
    assert server.requests == []


def test_verify_says_when_only_a_prefix_is_pinned(fakes, tmp_path):
    manifest, data = fakes
    entry = load_manifest(manifest)["beta"]
    wrong = bytearray(data["beta"])
    wrong[-1] ^= 0xFF
    path = tmp_path / "beta.onnx"
    path.write_bytes(bytes(wrong))

    with pytest.raises(ModelVerificationError, match="prefix") as err:
        verify(entry, path)
    assert entry.sha256 in str(err.value)
    path.write_bytes(data["beta"])
    verify(entry, path)


# ---------------------------------------------------------------------------------------------
# fetch_command (what `swapstream models fetch` runs)


def test_fetch_command_fetches_checks_and_reports(fakes, server, tmp_path, monkeypatch):
    manifest, data = fakes
    monkeypatch.setenv("SWAPSTREAM_MODELS", str(tmp_path / "env-models"))
    out = io.StringIO()

    assert fetch_command(names=["alpha"], manifest=manifest, progress=False, out=out) == 0

    assert (tmp_path / "env-models" / "alpha.onnx").read_bytes() == data["alpha"]
    text = out.getvalue()
    assert "alpha" in text and "downloaded" in text and "1 of 1" in text
    assert fetch_command(tmp_path / "env-models", ["nope"], manifest, out=io.StringIO()) == 2


def test_fetch_command_fails_on_io_mismatch(fakes, server, tmp_path):
    manifest, _ = fakes
    raw = yaml.safe_load(manifest.read_text())
    raw["models"]["alpha"]["inputs"][0]["name"] = "target"
    manifest.write_text(yaml.safe_dump(raw))
    out = io.StringIO()

    assert fetch_command(tmp_path / "m", None, manifest, progress=False, out=out) == 1
    assert "input 'target' is missing" in out.getvalue()
    assert "1 of 2" in out.getvalue()


# ---------------------------------------------------------------------------------------------
# the shipped manifest and the real YuNet


def _readme_pins() -> dict[str, tuple[int | None, str]]:
    """file -> (bytes or None, sha256 or its prefix) from ../shared/models/README.md tables."""
    pins = {}
    for line in (SHARED / "models" / "README.md").read_text().splitlines():
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and re.fullmatch(r"[\d,]+", cells[1]) and re.fullmatch(r"[0-9a-f]{8,64}", cells[2]):
            pins[cells[0]] = (int(cells[1].replace(",", "")), cells[2])
        elif len(cells) >= 3 and re.fullmatch(r"[0-9a-f]{64}", cells[2]):
            pins[cells[0]] = (None, cells[2])
    return pins


def test_shipped_manifest_has_every_model_and_field():
    entries = load_manifest()
    assert set(entries) == {"yunet", "arcface_simswap", "simswap_256", "gfpgan_1.4", "bisenet"}
    raw = yaml.safe_load(model_store.MANIFEST_PATH.read_text())["models"]
    for key, entry in entries.items():
        assert set(FIELDS) <= set(raw[key]), key
        for field in FIELDS:
            if field != "template":
                assert getattr(entry, field) not in (None, "", ()), (key, field)
        assert entry.url.startswith("https://"), key
        assert entry.sha256_is_full, key  # every pin was established in full
        assert len(entry.mean) == len(entry.std) == 3
        assert all(len(t.shape) >= 2 for t in entry.inputs + entry.outputs), key

    roles = {e.role for e in entries.values()}
    assert roles == {"detector", "identity", "swapper", "restorer", "parser"}
    assert entries["simswap_256"].template == "arcface_112_v1" and entries["simswap_256"].size == 256
    assert entries["gfpgan_1.4"].template == "ffhq_512" and entries["gfpgan_1.4"].size == 512


def test_shipped_manifest_agrees_with_shared_readme():
    pins = _readme_pins()
    entries = load_manifest()
    checked = 0
    for entry in entries.values():
        if entry.file in pins:
            size, sha = pins[entry.file]
            assert entry.sha256.startswith(sha), entry.key
            assert size is None or size == entry.bytes, entry.key
            checked += 1
    assert checked == 4  # yunet, simswap_256, arcface_simswap, GFPGANv1.4


def test_yunet_entry_verifies_against_the_real_file():
    assert YUNET_FILE.is_file(), f"real YuNet expected at {YUNET_FILE} (set SWAPSTREAM_SHARED)"
    entry = load_manifest()["yunet"]
    verify(entry, YUNET_FILE)
    check_io(entry, YUNET_FILE)


def test_check_io_names_what_does_not_match():
    entry = load_manifest()["yunet"]
    renamed = dataclasses.replace(entry, inputs=(dataclasses.replace(entry.inputs[0], name="images"),))
    with pytest.raises(ModelIOError) as err:
        check_io(renamed, YUNET_FILE)
    assert "input 'images' is missing" in str(err.value)
    assert "file has input 'input'" in str(err.value)

    outputs = list(entry.outputs)
    outputs[0] = dataclasses.replace(outputs[0], shape=(-1, 1))
    with pytest.raises(ModelIOError, match="output 'cls_8': rank 3"):
        check_io(dataclasses.replace(entry, outputs=tuple(outputs)), YUNET_FILE)

    # a manifest that fixes a dim the file leaves dynamic is compatible (a narrower config)
    fixed = dataclasses.replace(entry, inputs=(dataclasses.replace(entry.inputs[0], shape=(1, 3, 640, 640)),))
    check_io(fixed, YUNET_FILE)


def test_check_io_flags_fixed_dim_the_manifest_calls_dynamic(tmp_path):
    path = tmp_path / "fixed.onnx"
    path.write_bytes(_fake_onnx(5, pad_floats=10))
    spec = _entry_dict("fixed.onnx", path.read_bytes(), "https://example.invalid/")
    spec["inputs"][0]["shape"] = [-1, 4]
    manifest = tmp_path / "m.yaml"
    manifest.write_text(yaml.safe_dump({"models": {"fixed": spec}}))
    with pytest.raises(ModelIOError, match="dim 0 is fixed at 1"):
        check_io(load_manifest(manifest)["fixed"], path)
    onnx.checker.check_model(str(path))  # the fake itself is a valid model
