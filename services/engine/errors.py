"""The engine's input errors: each message says what was wrong and what to do."""
from __future__ import annotations

from pathlib import Path


class SwapInputError(ValueError):
    """Bad input (source photo, target, options); the message says what and what to do."""


class PhotoError(SwapInputError):
    """A photo that is refused; ``reason`` says why without naming the file (the caller knows it by its role)."""

    def __init__(self, reason: str, path: Path | None = None):
        super().__init__(f"{path}: {reason}" if path is not None else reason)
        self.reason = reason
