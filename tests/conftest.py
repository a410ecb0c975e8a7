"""Shared test fixtures. The bundled tiny trees have one copy, `ckptmap/data/maxtext_tiny` (what `ckptmap solve
MODEL --tiny` reads); `tests/data/maxtext_tiny` is a link to it, so tests and the tool read the same files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BUNDLED_TINY = REPO / "ckptmap" / "data" / "maxtext_tiny"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("KERAS_BACKEND", "jax")  # Keras fixes its backend on first import; the adapter's runner is JAX
REAL_CONFIGS = REPO / "tests" / "data" / "verify" / "real_configs.json"


@pytest.fixture(scope="session")
def bundled_tiny() -> Path:
    """The folder of bundled tiny pairs: <family>/{config.json, hf_params.json, maxtext_params.scan{0,1}.json}."""
    return BUNDLED_TINY


@pytest.fixture(scope="module")
def real_configs() -> dict:
    """MaxText model -> {"maxtext": its yml's values, "hf": the paired full-size HF config} (tests/data/verify)."""
    with open(REAL_CONFIGS) as f:
        return json.load(f)
