"""glibc's allocator set up for a conversion: memory a worker frees is reused, not handed back to the kernel.

By default glibc serves every block over 32 MB with its own `mmap` and `munmap`s it on `free`, and gives each thread
an arena of its own. A conversion allocates and frees the same large blocks over and over (the rules' inputs,
outputs and TensorStore's chunk buffers: about three times the checkpoint's bytes), so the kernel zeroes every page
of every block anew (`clear_page`, ~15 core-seconds on a 16 GB conversion here, with the page faults) and CPU that
a 2-core machine needs for transposes goes to that. With one arena, no per-block `mmap` and no trimming, a freed
block is reused as it is; peak RSS does not grow, because the in-flight budget already bounds what is live at once.

Only conversion processes do this (they exit after one conversion): `ckptmap convert` calls `keep_freed_memory`
before any thread takes an arena of its own, and Ray's conversion tasks start with `worker_env()` (the same
settings as glibc's environment variables). Without glibc's `mallopt` nothing changes.
"""

from __future__ import annotations

import ctypes
import os

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8

TOP_PAD_BYTES = 256 << 20  # how much the heap grows by at a time, so it is not grown once per block
TRIM_THRESHOLD_BYTES = 2**31 - 1  # give the heap's top back only past 2 GiB free (mallopt takes an int)
OPT_OUT = "CKPTMAP_SYSTEM_MALLOC"  # set to 1 to leave the allocator as it was


# (mallopt parameter, the environment variable glibc reads for it at a process's start, value)
_SETTINGS = ((_M_ARENA_MAX, "MALLOC_ARENA_MAX", 1), (_M_MMAP_MAX, "MALLOC_MMAP_MAX_", 0),
             (_M_TOP_PAD, "MALLOC_TOP_PAD_", TOP_PAD_BYTES), (_M_TRIM_THRESHOLD, "MALLOC_TRIM_THRESHOLD_",
                                                             TRIM_THRESHOLD_BYTES))


def _opted_out() -> bool:
    return os.environ.get(OPT_OUT) == "1"


def worker_env() -> dict[str, str]:
    """The same settings as environment variables, for a worker process started later (Ray's tasks); empty when
    CKPTMAP_SYSTEM_MALLOC=1."""
    return {} if _opted_out() else {env: str(value) for _, env, value in _SETTINGS}


def keep_freed_memory() -> bool:
    """Make glibc reuse freed blocks for the rest of this process (one arena, no per-block mmap, no trim).
    Returns whether it applied: False without glibc's mallopt, or when CKPTMAP_SYSTEM_MALLOC=1."""
    if _opted_out():
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(param, value) == 1 for param, _, value in _SETTINGS)
