"""What the page tests share: one headless Chromium per module (a module that needs a fake camera defines its own)."""
from __future__ import annotations

import pytest

from tests.helpers.browser import chromium


@pytest.fixture(scope="module")
def browser():
    with chromium() as running:
        yield running
