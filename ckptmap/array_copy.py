"""Copy one array into another of the same shape, fast when their memory orders differ (a transpose).

numpy copies a transposed view element by element in the destination's order, so every read jumps a whole row
of the source: about 100-250 MB/s for 2-byte elements, well under a disk's speed. `copy_into` copies in tiles
that are long along the source's fastest axis and short along the destination's (TILE_LONG x TILE_SHORT
elements), and on raw unsigned views of the bytes (bfloat16 and float8 as uint16 / uint8) so that numpy's plain
integer loops run, without holding the GIL, and other threads convert beside it. Measured on this project's
2-core VM (2026-12-07, a [14336, 4096] uint16 transpose): square 181 x 181 tiles 300 MB/s, 1024 x 16 tiles
~1.0-1.2 GB/s, numpy's own copy 150 MB/s.

Where the compiled kernel ckptmap.native.transpose was built (setup.py; optional), a copy whose two fastest
axes are contiguous goes through it instead, one 2-D slab at a time: SSE2 register blocks, ~2x the tiles
(benchmarks/RESULTS.md, session 10). Adjacent axes that are one axis in both arrays are merged first, so the slabs
are as large as the layout allows.
"""

from __future__ import annotations

import itertools

import numpy as np
from numpy.lib.array_utils import byte_bounds

from ckptmap import native

TILE_BYTES = 1 << 16  # arrays under 4 tiles' bytes are copied by numpy directly
TILE_LONG = 1024  # elements along the source's fastest axis: whole cache lines of the source read in a row
TILE_SHORT = 16  # elements along the destination's fastest axis: 16 source rows in flight, in L1
_RAW = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def raw_view(array: np.ndarray) -> np.ndarray:
    """The same memory as unsigned integers of the same width (any strides); the array itself when no plain
    integer type has its item size (complex128, strings)."""
    raw = _RAW.get(array.dtype.itemsize)
    if raw is None or array.dtype == raw or array.dtype.kind == "b":
        return array
    return array.view(raw) if array.ndim else array.reshape(1).view(raw).reshape(())


def _fastest_axis(array: np.ndarray) -> int:
    """The axis with the smallest stride among those longer than 1 (-1 when none)."""
    axes = [a for a in range(array.ndim) if array.shape[a] > 1]
    return min(axes, key=lambda a: abs(array.strides[a])) if axes else -1


SCANNED_ITEMSIZES = (2, 4)  # element sizes whose sign-less maximum the kernel takes while it copies


def copy_into(dst: np.ndarray, src: np.ndarray, scan: bool = False) -> int | None:
    """dst[...] = src (same shape; src's dtype is cast to dst's when they differ). With `scan`, where the compiled
    kernel did the copy of 2- or 4-byte elements, returns the largest (x & sign-less mask) over src's bits (the
    NaN/Inf test of ckptmap.native.scan, taken on the way); None where it did not (the caller scans)."""
    src = np.asarray(src)
    if src.shape != dst.shape:
        dst[...] = src  # numpy's own broadcasting and its error for shapes that do not fit
        return None
    if src.dtype != dst.dtype:
        np.copyto(dst, src, casting="unsafe")
        return None
    d, s = _merged(raw_view(dst), raw_view(src))
    a, b = _fastest_axis(s), _fastest_axis(d)
    if a < 0 or a == b or s.size * s.itemsize < 4 * TILE_BYTES:
        d[...] = s
        return None
    kernel = native.module("transpose")
    if kernel is not None and s.itemsize in _RAW and s.strides[a] == s.itemsize and d.strides[b] == d.itemsize:
        return _native_slabs(kernel, d, s, a, b, scan and s.itemsize in SCANNED_ITEMSIZES)
    side = {a: TILE_LONG, b: TILE_SHORT}
    # the crossing axes in tiles, every other axis one index at a time (its stride is a whole tile or more)
    steps = [range(0, n, side[ax]) if ax in side else range(n) for ax, n in enumerate(s.shape)]
    for start in itertools.product(*steps):
        idx = tuple(slice(i, i + side[ax]) if ax in side else i for ax, i in enumerate(start))
        d[idx] = s[idx]
    return None


def native_enabled() -> bool:
    """Whether copies go through the compiled kernel (built, and not turned off by CKPTMAP_NO_NATIVE=1)."""
    return native.module("transpose") is not None


def _merged(d: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same two arrays (same shape) with each run of adjacent axes that is one axis in both viewed as one
    (a [hidden, heads, head_dim] target from a [heads * head_dim, hidden] source becomes [hidden, heads *
    head_dim] on both sides); unchanged when nothing merges."""
    if d.ndim < 2:
        return d, s
    shape, ds, ss = [d.shape[0]], [d.strides[0]], [s.strides[0]]
    for ax in range(1, d.ndim):
        n = d.shape[ax]
        if d.strides[ax] * n == ds[-1] and s.strides[ax] * n == ss[-1]:
            shape[-1] *= n
            ds[-1], ss[-1] = d.strides[ax], s.strides[ax]
        else:
            shape.append(n)
            ds.append(d.strides[ax])
            ss.append(s.strides[ax])
    if len(shape) == d.ndim:
        return d, s
    return (np.lib.stride_tricks.as_strided(d, shape, ds, writeable=True),
            np.lib.stride_tricks.as_strided(s, shape, ss, writeable=False))


def _native_slabs(kernel, d: np.ndarray, s: np.ndarray, a: int, b: int, scan: bool = False) -> int | None:
    """d[...] = s through the compiled `kernel` (ckptmap.native.transpose): for each index of the axes other than
    a (contiguous in s) and b (contiguous in d), the 2-D slab s[b, a] -> d[a, b]. With `scan`, the largest
    sign-less bit pattern over all of s (else None)."""
    others = [ax for ax in range(s.ndim) if ax not in (a, b)]
    d0, s0 = d.__array_interface__["data"][0], s.__array_interface__["data"][0]
    best = 0
    for idx in itertools.product(*(range(s.shape[ax]) for ax in others)):
        d_off = sum(i * d.strides[ax] for i, ax in zip(idx, others))
        s_off = sum(i * s.strides[ax] for i, ax in zip(idx, others))
        slab = kernel.transpose2d(d0 + d_off, s0 + s_off, s.shape[b], s.shape[a], d.strides[a], s.strides[b],
                                  s.itemsize, scan)
        best = max(best, slab or 0)
    return best if scan else None


def contiguous(array: np.ndarray) -> np.ndarray:
    """A C-ordered array of the same values: the array itself when it already is, else a fast copy (0-d stays
    0-d)."""
    return contiguous_scanned(array, scan=False)[0]


def contiguous_scanned(array: np.ndarray, scan: bool = True) -> tuple[np.ndarray, int | None]:
    """(contiguous(array), the largest sign-less bit pattern of its elements where the kernel took it while
    copying, else None: see copy_into)."""
    array = np.asarray(array)
    if array.flags.c_contiguous:
        return array, None
    out = np.empty(array.shape, array.dtype)
    return out, copy_into(out, array, scan=scan)


def views_all_of(view: np.ndarray, array: np.ndarray) -> bool:
    """Whether `view` holds every element of the C-ordered `array` once (a transpose, reversal or reshape of it):
    the same item type and count, a dense layout (its axes, by stride, step exactly over the ones below them)
    and the same first and last byte."""
    if not array.flags.c_contiguous or view.dtype != array.dtype or view.size != array.size or not view.size:
        return False
    step = view.itemsize
    for stride, n in sorted((abs(st), n) for st, n in zip(view.strides, view.shape) if n > 1):
        if stride != step:
            return False
        step *= n
    return byte_bounds(view) == byte_bounds(array)
