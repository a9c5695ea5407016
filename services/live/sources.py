"""Source identities computed once and stored (``POST /v1/sources``): ``<data>/sources/<id>.npz`` holds the
identity's arrays (what its swapper needs: SimSwap's embedding, the mesh swapper's texture and mesh), ``<id>.json``
what it was made from and for which swapper (``"swapper"``: an identity drives only that one). At most
``max_count`` are kept, each for ``max_age`` seconds after it was made (then it is removed, at the next save or
look-up)."""
from __future__ import annotations

import json
import re
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Iterable

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
        """Removes the sources made more than ``max_age`` seconds ago, what a killed save left and the ``.npy``
        identities of before swappers were named (older than a minute); returns how many sources are left."""
        left = 0
        now = time.time()
        for path in [*self.folder.glob("*.json"), *self.folder.glob("*.tmp.npz"), *self.folder.glob("*.npy")]:
            try:
                age = now - path.stat().st_mtime
            except FileNotFoundError:
                continue
            complete = path.suffix == ".json" and path.with_suffix(".npz").exists()
            if age > self.max_age or (not complete and age > 60):
                path.unlink(missing_ok=True)
                path.with_suffix(".npz").unlink(missing_ok=True)
                continue
            left += complete
        return left

    def _paths(self, source_id: str) -> tuple[Path, Path] | None:
        if not _ID.match(source_id):  # never a client's string in a path
            return None
        return self.folder / f"{source_id}.npz", self.folder / f"{source_id}.json"

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
        temporary = array_path.with_suffix(".tmp.npz")
        np.savez(temporary, **identity)
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
        if paths is None:
            return None
        with np.load(paths[0]) as arrays:
            return {name: arrays[name] for name in arrays.files}

    def delete(self, source_id: str) -> bool:
        paths = self._paths(source_id)
        if paths is None or not (paths[0].exists() or paths[1].exists()):
            return False
        for path in paths:
            path.unlink(missing_ok=True)
        return True


class IdentityMaker:
    """Photos -> one identity of a swapper, through Triton ``detect`` and that swapper (a ``SwapInputError`` when a
    photo has no face). One request at a time: the swappers' DALI pipelines are their own."""

    def __init__(self, swappers: Callable[[str], FaceSwapper]):
        self.swappers = swappers  # a swapper's name -> the FaceSwapper used here for it
        self._lock = threading.Lock()

    def __call__(self, photos: Iterable[tuple[str, np.ndarray]],
                 swapper: str) -> tuple[dict[str, np.ndarray], list[int], list[str]]:
        """[(name, rgb)] -> (``swapper``'s identity, faces found per photo, notes). ``photos`` may decode each photo
        as it is taken: one at a time, inside the lock."""
        notes = []
        with self._lock:
            named = ((f"source photo {name}", name, rgb) for name, rgb in photos)
            identity, faces = self.swappers(swapper).identity_of(named, notes)
        return identity, faces, notes
