"""The NumPy adaptive max pooling (gpuconv/_numpy/adaptive_pool.py: one gather and one elementwise update per
window tap) bit for bit: the value of PyTorch's winner itself (a tie between +0.0 and -0.0 keeps the first,
of several NaNs the last one's payload wins) and its index, for 1-D, 2-D and 3-D, every dtype, windows of
unequal lengths (shorter ones repeat their last element), more outputs than inputs, non-contiguous inputs,
and blocks cut by a small workspace. The reference is an element-by-element loop over the raw array
elements (so that no conversion touches their bits); PyTorch CPU is checked as well where installed. The
value and index matrices of tests/test_pool.py, test_pool_nd.py and test_adaptive_pool3d.py cover the rest.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import gpuconv
from tests.reference import adaptive_windows
from tests.runners import torch

UINT = {2: np.uint16, 4: np.uint32, 8: np.uint64}
FUNCS = {1: gpuconv.adaptive_max_pool1d, 2: gpuconv.adaptive_max_pool2d, 3: gpuconv.adaptive_max_pool3d}


def _exact_ref(x, out):
    """PyTorch's rule element by element: take ``v`` when ``v > best`` or ``v`` is NaN, cells in row-major
    order; returns the winning elements themselves (bits untouched) and their flat indices."""
    n, c, *spatial = x.shape
    y = np.empty((n, c, *out), x.dtype)
    idx = np.empty((n, c, *out), np.int64)
    wins = [adaptive_windows(s, o) for s, o in zip(spatial, out)]
    for i, j in itertools.product(range(n), range(c)):
        plane = x[i, j]
        for o in itertools.product(*(range(k) for k in out)):
            best, arg = None, None
            for cell in itertools.product(*(range(*wins[a][o[a]]) for a in range(len(out)))):
                v = plane[cell]
                if best is None or v > best or np.isnan(v):
                    best, arg = v, int(np.ravel_multi_index(cell, spatial))
            y[(i, j, *o)], idx[(i, j, *o)] = best, arg
    return y, idx


def _data(shape, dtype, rng):
    """Values from {-1, -0.0, +0.0, 1} (ties of both zeros everywhere), -inf, and NaNs of distinct
    payloads."""
    x = rng.choice(np.array([-1.0, -0.0, 0.0, 0.0, 1.0, -np.inf, np.nan]), shape).astype(dtype)
    bits = x.view(UINT[x.itemsize])
    nan = np.isnan(x)
    bits[nan] |= rng.integers(1, 60, int(nan.sum())).astype(bits.dtype)  # payloads, still NaN
    return x


CASES = [  # spatial shape, output size
    ((11,), (4,)), ((5,), (9,)), ((7, 13), (3, 5)), ((13, 13), (6, 6)), ((4, 3), (7, 5)), ((9, 1), (2, 1)),
    ((5, 6, 7), (2, 4, 3)), ((3, 8, 5), (4, 3, 5)),
]


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("spatial, out", CASES, ids=[f"{s}->{o}" for s, o in CASES])
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "small-workspace"])
def test_adaptive_max_bitwise(monkeypatch, dtype, spatial, out, layout):
    rng = np.random.default_rng(len(spatial) * 100 + spatial[0])
    x = _data((2, 3, *spatial), dtype, rng)
    view = x
    if layout == "transposed":  # channels-last storage seen as (N, C, *spatial)
        view = np.moveaxis(np.ascontiguousarray(np.moveaxis(x, 1, -1)), -1, 1)
        assert not view.flags.c_contiguous
    if layout == "small-workspace":  # blocks of a few outputs, windows cut out of the planes
        monkeypatch.setenv("GPUCONV_NUMPY_WORKSPACE_MB", "0.002")
    ref_y, ref_i = _exact_ref(x, out)
    fn = FUNCS[len(spatial)]
    y, idx = fn(view, out, return_indices=True)
    assert y.tobytes() == ref_y.tobytes()
    np.testing.assert_array_equal(idx, ref_i)
    assert fn(view, out).tobytes() == ref_y.tobytes()  # without indices: the same bits
    assert gpuconv.last_kernel().kernel.startswith("numpy_adaptive_max_pool")
    if torch is not None:
        t_fn = getattr(torch.nn.functional, f"adaptive_max_pool{len(spatial)}d")
        ty, ti = t_fn(torch.from_numpy(x), out, return_indices=True)
        assert ty.numpy().tobytes() == ref_y.tobytes()
        np.testing.assert_array_equal(ti.numpy(), ref_i)
