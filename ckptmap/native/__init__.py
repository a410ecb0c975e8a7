"""Compiled kernels (optional: ckptmap works without them, more slowly); see each .c file and setup.py.

`module(name)` is the built module ckptmap.native.<name>, or None where it was not built (no C compiler at
install) or CKPTMAP_NO_NATIVE=1 is set (the numpy paths then do the same work: tests run both)."""

from __future__ import annotations

import functools
import importlib
import os


@functools.cache
def _built(name: str):
    try:
        return importlib.import_module(f"ckptmap.native.{name}")
    except ImportError:
        return None


def module(name: str):
    """The compiled module `name` ("transpose", "scan"), or None (not built, or turned off)."""
    if os.environ.get("CKPTMAP_NO_NATIVE", "") not in ("", "0"):
        return None
    return _built(name)
