"""Source identities computed once and stored (``POST /v1/sources``): ``<data>/sources/<id>.npy`` holds the
identity's L2-normalised embedding [512] (SimSwap's identity, ``{"embedding": ...}``), ``<id>.json`` what it was
made from. At most ``max_count`` are kept, each for ``max_age`` seconds after it was made (then it is removed, at
the next save or look-up)."""
from __future__ import annotations

import json
import re
import threading
import time
import uuid
from pathlib import Path
from typing import Iterable

import numpy as np

from swapstream.services.engine.swapper import FaceSwapper

_ID = re.compile(r"^[0-9a-f]{32}$")


class SourceQuota(Exception):
    """The store holds ``max_count`` sources already; the message says what to do."""


class SourceStore:
    def __init__(self, folder: Path, max_count: int = 1000, max_age: float = 30 * 86400.0):
        self.folder = folder
        self.max_count = max_count
        self.max_age = max_age
        self._lock = threading.Lock()
        folder.mkdir(parents=True, exist_ok=True)
        self.expire()

    def expire(self) -> int:
        """Removes the sources made more than ``max_age`` seconds ago, and what a killed save left (older than a
        minute); returns how many sources are left."""
        left = 0
        now = time.time()
        for path in list(self.folder.glob("*.json")) + list(self.folder.glob("*.tmp.npy")):
            try:
                age = now - path.stat().st_mtime
            except FileNotFoundError:
                continue
            complete = path.suffix == ".json" and path.with_suffix(".npy").exists()
            if age > self.max_age or (not complete and age > 60):
                path.unlink(missing_ok=True)
                path.with_suffix(".npy").unlink(missing_ok=True)
                continue
            left += complete
        return left

    def _paths(self, source_id: str) -> tuple[Path, Path] | None:
        if not _ID.match(source_id):  # never a client's string in a path
            return None
        return self.folder / f"{source_id}.npy", self.folder / f"{source_id}.json"

    def check_room(self) -> None:
        """SourceQuota when ``max_count`` sources are stored (checked before a new one is computed, and on save)."""
        if self.expire() >= self.max_count:
            raise SourceQuota(f"{self.max_count} sources are stored, the most this service keeps; delete unused "
                              "ones (DELETE /v1/sources/{id}) or reuse one")

    def save(self, identity: dict[str, np.ndarray], info: dict) -> dict:
        with self._lock:
            self.check_room()
            return self._save(identity, info)

    def _save(self, identity: dict[str, np.ndarray], info: dict) -> dict:
        source_id = uuid.uuid4().hex
        array_path, info_path = self._paths(source_id)
        info = {"id": source_id, **info, "created": time.time()}
        temporary = array_path.with_suffix(".tmp.npy")
        np.save(temporary, np.asarray(identity["embedding"], np.float32))
        info_path.write_text(json.dumps(info))
        temporary.rename(array_path)  # the identity exists once both files are complete
        return info

    def _live_paths(self, source_id: str) -> tuple[Path, Path] | None:
        """The paths of a stored source that has not expired (an expired one is removed now)."""
        paths = self._paths(source_id)
        if paths is None or not paths[0].exists():
            return None
        try:
            if time.time() - paths[1].stat().st_mtime > self.max_age:
                self.delete(source_id)
                return None
        except FileNotFoundError:
            return None
        return paths

    def info(self, source_id: str) -> dict | None:
        paths = self._live_paths(source_id)
        return None if paths is None else json.loads(paths[1].read_text())

    def identity(self, source_id: str) -> dict[str, np.ndarray] | None:
        paths = self._live_paths(source_id)
        return None if paths is None else {"embedding": np.load(paths[0])}

    def delete(self, source_id: str) -> bool:
        paths = self._paths(source_id)
        if paths is None or not (paths[0].exists() or paths[1].exists()):
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

    def __call__(self, photos: Iterable[tuple[str, np.ndarray]]) -> tuple[dict[str, np.ndarray], list[int], list[str]]:
        """[(name, rgb)] -> (identity, faces found per photo, notes). ``photos`` may decode each photo as it is
        taken: one at a time, inside the lock."""
        notes = []
        with self._lock:
            identity, faces = self.swapper.identity_of(((f"source photo {name}", name, rgb) for name, rgb in photos),
                                                       notes)
        return identity, faces, notes
