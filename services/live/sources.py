"""Source identities computed once and stored (``POST /v1/sources``): ``<data>/sources/<id>.npy`` holds the
identity's L2-normalised embedding [512] (SimSwap's identity, ``{"embedding": ...}``), ``<id>.json`` what it was
made from."""
from __future__ import annotations

import json
import re
import threading
import time
import uuid
from pathlib import Path

import numpy as np

from swapstream.services.engine.swapper import FaceSwapper

_ID = re.compile(r"^[0-9a-f]{32}$")


class SourceStore:
    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def _paths(self, source_id: str) -> tuple[Path, Path] | None:
        if not _ID.match(source_id):  # never a client's string in a path
            return None
        return self.folder / f"{source_id}.npy", self.folder / f"{source_id}.json"

    def save(self, identity: dict[str, np.ndarray], info: dict) -> dict:
        source_id = uuid.uuid4().hex
        array_path, info_path = self._paths(source_id)
        info = {"id": source_id, **info, "created": time.time()}
        temporary = array_path.with_suffix(".tmp.npy")
        np.save(temporary, np.asarray(identity["embedding"], np.float32))
        info_path.write_text(json.dumps(info))
        temporary.rename(array_path)  # the identity exists once both files are complete
        return info

    def info(self, source_id: str) -> dict | None:
        paths = self._paths(source_id)
        if paths is None or not paths[0].exists():
            return None
        return json.loads(paths[1].read_text())

    def identity(self, source_id: str) -> dict[str, np.ndarray] | None:
        paths = self._paths(source_id)
        if paths is None or not paths[0].exists():
            return None
        return {"embedding": np.load(paths[0])}

    def delete(self, source_id: str) -> bool:
        paths = self._paths(source_id)
        if paths is None or not paths[0].exists():
            return False
        for path in paths:
            path.unlink(missing_ok=True)
        return True


class IdentityMaker:
    """Photos -> one identity, through Triton ``detect`` and the swapper (a ``SwapInputError`` when a photo has
    no face). One request at a time: the swapper's DALI pipelines are its own."""

    def __init__(self, swapper: FaceSwapper):
        self.swapper = swapper
        self._lock = threading.Lock()

    def __call__(self, photos: list[tuple[str, np.ndarray]]) -> tuple[dict[str, np.ndarray], list[int], list[str]]:
        """[(name, rgb)] -> (identity, faces found per photo, notes)."""
        notes = []
        with self._lock:
            identity, faces = self.swapper.identity_of([(f"source photo {name}", name, rgb) for name, rgb in photos],
                                                       notes)
        return identity, faces, notes
