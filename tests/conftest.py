"""Shared test fixtures. The bundled tiny trees have one copy, `ckptmap/data/maxtext_tiny` (what `ckptmap solve
MODEL --tiny` reads); `tests/data/maxtext_tiny` is a link to it, so tests and the tool read the same files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BUNDLED_TINY = REPO / "ckptmap" / "data" / "maxtext_tiny"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def bundled_tiny() -> Path:
    """The folder of bundled tiny pairs: <family>/{config.json, hf_params.json, maxtext_params.scan{0,1}.json}."""
    return BUNDLED_TINY
