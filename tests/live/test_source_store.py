"""Issue 18, item 10: the stored sources have a quota and an expiry (the store on a real folder; the service's
answers to them, 507 and 404, are in ``tests/jobs/test_security.py``)."""
from __future__ import annotations

import os
import time

import numpy as np
import pytest

from swapstream.services.live.sources import SourceQuota, SourceStore


def test_sources_are_capped_and_expire(tmp_path):
    store = SourceStore(tmp_path, max_count=2, max_age=3600)
    identity = {"embedding": np.ones(512, np.float32) / np.sqrt(512)}
    first, second = store.save(identity, {}), store.save(identity, {})
    arrays = next(p for p in tmp_path.glob(f"{first['id']}.*") if p.suffix != ".json")  # .npy or .npz
    with pytest.raises(SourceQuota, match="2 sources are stored"):
        store.save(identity, {})
    hour_ago = time.time() - 3700
    os.utime(tmp_path / f"{first['id']}.json", (hour_ago, hour_ago))
    third = store.save(identity, {})  # the expired one made room
    assert store.info(first["id"]) is None and not list(tmp_path.glob(f"{first['id']}*"))
    assert store.identity(second["id"]) is not None and store.identity(third["id"]) is not None
    leftover = tmp_path / f"{'0' * 32}.tmp{arrays.suffix}"  # what a killed save leaves
    leftover.write_bytes(b"half")
    os.utime(leftover, (hour_ago, hour_ago))
    assert SourceStore(tmp_path, max_count=2, max_age=7200).expire() == 2
    assert not leftover.exists()
