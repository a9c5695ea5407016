"""The data folder's free space: a full disk is the machine's fault, never the job's or the client's."""
from __future__ import annotations

import errno
import shutil
from dataclasses import dataclass
from pathlib import Path

MB = 1 << 20
_FULL = (errno.ENOSPC, errno.EDQUOT)
_FULL_TEXT = ("no space left on device", "disk quota exceeded", "database or disk is full")


def is_disk_full(error: BaseException) -> bool:
    """The error (or one it was raised from) is a full disk or an exceeded quota: ENOSPC/EDQUOT, or a message of
    a child process (ffmpeg) or of SQLite that says so."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _FULL:
            return True
        if any(text in str(error).lower() for text in _FULL_TEXT):
            return True
        error = error.__cause__ or error.__context__
    return False


@dataclass(frozen=True)
class DiskSpace:
    folder: Path
    min_free_bytes: int = 100 * MB

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.folder).free

    def low(self) -> bool:
        """Less free space than ``min_free_bytes``: no new work is started or accepted."""
        return self.free_bytes() < self.min_free_bytes

    def describe(self) -> str:
        return (f"the data folder's disk has {self.free_bytes() / MB:.0f} MB free, less than the "
                f"{self.min_free_bytes / MB:g} MB kept free (--min-free-mb)")
