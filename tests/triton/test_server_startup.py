"""Start-up: the server starts one Python backend stub per model instance and none only to complete a config
(each stub imports numpy and onnxruntime: on 2 cores the extra ones doubled the start-up)."""
from __future__ import annotations

import shutil

from swapstream.services.triton.server import EmbeddedTriton

STUB_STARTED = "Starting Python backend stub"


def test_one_stub_per_model_instance(triton_repository, tmp_path):
    repository = tmp_path / "repo"
    for name in ("identity_preprocess", "identity_postprocess"):
        shutil.copytree(triton_repository / name, repository / name)
    with EmbeddedTriton(repository, log_verbose=1) as server:
        log = server.log()
    assert "successfully loaded 'identity_postprocess'" in log
    assert log.count(STUB_STARTED) == 2, "\n".join(line for line in log.splitlines() if STUB_STARTED in line)
