"""ckptmap.array_copy: every copy path (the compiled kernel, the numpy tiles, numpy's own) gives numpy's bytes."""

from __future__ import annotations

import itertools

import ml_dtypes
import numpy as np
import pytest

from ckptmap import array_copy, native
from ckptmap.array_copy import contiguous, copy_into
from ckptmap.convert import count_nonfinite

DTYPES = [np.uint8, np.int16, ml_dtypes.bfloat16, np.float16, np.float32, np.float64, np.complex64, np.complex128]
SHAPES = [(67, 130), (8, 64), (1000, 3), (19, 33, 129), (5, 40, 96), (2, 3, 41, 50)]


@pytest.fixture(params=["native", "numpy tiles"])
def path(request, monkeypatch):
    """Each test once through the compiled kernel and once through the numpy tiles, with tiles small enough
    that small arrays take the tiled paths too."""
    monkeypatch.setattr(array_copy, "TILE_BYTES", 4)
    if request.param == "native":
        if not array_copy.native_enabled():
            pytest.fail("ckptmap.native.transpose was not built: `pip install -e .` needs a C compiler")
    else:
        monkeypatch.setenv("CKPTMAP_NO_NATIVE", "1")
        assert not array_copy.native_enabled()
    return request.param


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_every_permutation_and_reversal_copies_numpys_bytes(path, dtype):
    rng = np.random.default_rng(0)
    for shape in SHAPES:
        a = (rng.standard_normal(shape) * 100).astype(dtype)
        for perm in itertools.permutations(range(len(shape))):
            for view in (a.transpose(perm), a.transpose(perm)[::-1], a.transpose(perm)[..., 1:],
                         a.transpose(perm)[..., ::-2]):
                assert contiguous(view).tobytes() == np.ascontiguousarray(view).tobytes(), (shape, perm)


def test_a_stacked_slice_is_filled_and_nothing_else(path):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((96, 4096)).astype(ml_dtypes.bfloat16)
    buf = np.zeros((4096, 5, 96), ml_dtypes.bfloat16)
    copy_into(buf[:, 2], x.T)
    assert buf[:, 2].tobytes() == np.ascontiguousarray(x.T).tobytes()
    assert not buf[:, [0, 1, 3, 4]].view(np.uint16).any()


def test_heads_merge_into_one_transpose(path):
    """[heads * head_dim, hidden] -> [hidden, heads, head_dim]: the two head axes are one axis on both sides."""
    q = np.arange(32 * 16 * 72, dtype=np.float32).reshape(32 * 16, 72)
    out = contiguous(q.reshape(32, 16, 72).transpose(2, 0, 1))
    assert out.shape == (72, 32, 16)
    assert out.tobytes() == np.ascontiguousarray(q.T).tobytes()


def test_the_kernel_refuses_an_item_size_it_has_no_loop_for():
    kernel = native.module("transpose")
    if kernel is None:
        pytest.fail("ckptmap.native.transpose was not built")
    a = np.zeros((4, 4), np.uint8)
    with pytest.raises(ValueError, match="item size 3"):
        kernel.transpose2d(a.ctypes.data, a.ctypes.data, 2, 2, 4, 4, 3)


@pytest.mark.parametrize("dtype", [ml_dtypes.bfloat16, np.float16, np.float32, np.float64],
                         ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("way", ["native", "numpy"])
def test_nonfinite_counts_are_the_same_either_way(dtype, way, monkeypatch):
    if way == "numpy":
        monkeypatch.setenv("CKPTMAP_NO_NATIVE", "1")
    elif native.module("scan") is None:
        pytest.fail("ckptmap.native.scan was not built: `pip install -e .` needs a C compiler")
    rng = np.random.default_rng(2)
    a = (rng.standard_normal(100_003) * 1e3).astype(dtype)
    assert count_nonfinite(a) == (0, 0)
    assert count_nonfinite(-np.abs(a)) == (0, 0)  # the sign bit is not a NaN
    for at, value in ((7, np.nan), (100_002, np.inf), (50_000, -np.inf), (8, np.nan), (15, -np.nan)):
        a[at] = value
    assert count_nonfinite(a) == (3, 2)
    view = a[1::7]  # a strided view: 8 and 15 fall in it
    wide = view.astype(np.float64)
    assert count_nonfinite(view) == (int(np.isnan(wide).sum()), int(np.isinf(wide).sum())) == (2, 0)


_SIGNLESS = {2: np.uint16(0x7FFF), 4: np.uint32(0x7FFFFFFF)}


@pytest.mark.parametrize("dtype", [ml_dtypes.bfloat16, np.float16, np.float32], ids=lambda d: np.dtype(d).name)
def test_the_kernel_takes_the_nonfinite_scan_on_the_way(path, dtype):
    """copy_into(scan=True) gives the largest sign-less bit pattern of what it copied where the kernel transposed
    it (the edges outside its register blocks included), and None where numpy copied (the caller then scans)."""
    rng = np.random.default_rng(3)
    raw = array_copy.raw_view
    for shape in SHAPES[:5]:
        a = (rng.standard_normal(shape) * 100).astype(dtype)
        for plant in (None, np.nan, np.inf, -np.inf):
            if plant is not None:
                a.reshape(-1)[rng.integers(a.size)] = plant
            want = int((raw(a) & _SIGNLESS[a.itemsize]).max())
            for perm in list(itertools.permutations(range(a.ndim)))[1:]:
                view = a.transpose(perm)
                out = np.empty(view.shape, a.dtype)
                got = copy_into(out, view, scan=True)
                assert out.tobytes() == np.ascontiguousarray(view).tobytes()
                transposed = perm[-1] != a.ndim - 1  # else numpy copies rows as they are, and does not scan
                assert got == (want if path == "native" and transposed else None), (shape, perm, plant)


def test_no_scan_where_the_kernel_has_no_mask_or_was_not_asked(path):
    x = np.arange(64 * 70, dtype=np.float64).reshape(64, 70)
    assert copy_into(np.empty((70, 64)), x.T, scan=True) is None  # 8-byte elements: the caller scans
    y = x.astype(np.float32)
    assert copy_into(np.empty((70, 64), np.float32), y.T) is None
    assert array_copy.contiguous_scanned(y)[1] is None  # already C-ordered: nothing copied, nothing scanned


def test_views_all_of_an_array_are_its_dense_rearrangements():
    a = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    views_all_of = array_copy.views_all_of
    assert views_all_of(a.T, a) and views_all_of(a.transpose(1, 0, 2), a) and views_all_of(a[::-1, :, ::-1], a)
    assert views_all_of(a.reshape(6, 4).T, a) and views_all_of(a, a)
    assert not views_all_of(a[:, :2], a)  # a part
    assert not views_all_of(a.T.astype(np.float64), a)  # another array
    assert not views_all_of(np.broadcast_to(a[:1], (2, 3, 4)), a)  # one element twice
    lapped = np.lib.stride_tricks.as_strided(a, (2, 12), (4 * 4, 4))  # 24 elements over 16: some twice
    assert not views_all_of(lapped, a)
    assert not views_all_of(a.T, a.T)  # only a C-ordered array is the reference
