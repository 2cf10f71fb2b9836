"""The pooling CUDA kernels (kernels/pool2d.cu) and their launch code (gpuconv/_cuda/pool.py) against the
textbook loop references of tests/reference.py (straight from the definitions in docs/semantics.md,
PyTorch's torch.nn.functional pooling; independent of the kernel code, output sizes included), averages
under the shared tolerance model (tests/tolerance.py), max pooling exactly.

Every test that launches a kernel takes the ``rt`` fixture (tests/runners.py) and runs twice: executed on
the CPU by tests/emulator (``[emulated-...]``, marked ``emulated``) and on a GPU (``[gpu-...]``, marked
``gpu``; skipped without CuPy or a device), with the same NumPy test data (``numpy_io``; non-contiguous
inputs keep their strides on the device). The reversed thread order is the emulator's; on a GPU that test
runs in the hardware's own order. Nothing here is emulator-only; the host-side 32-bit rule test (nothing
launched) carries no marker.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from gpuconv._cuda import limits, ops, pool
from gpuconv._pool_geometry import AdaptiveGeometry, PoolGeometry, adaptive_geometry, pool_geometry
from tests.reference import adaptive_pool2d_ref, avg_pool2d_ref, max_pool2d_ref, pair
from tests.runners import SpyRuntime, numpy_io, runtime_fixture, with_thread_order
from tests.tolerance import assert_close

# inf - inf in the references of the -inf / NaN cases is intended
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")

DTYPES = (np.float16, np.float32, np.float64)


# --------------------------------------------------------------------------------------------
# runtime
# --------------------------------------------------------------------------------------------

# The emulator and a GPU (tests/runners.py): every test that takes ``rt`` runs on both.
rt = runtime_fixture()


# --------------------------------------------------------------------------------------------
# helpers: run one op, check shape / dtype / layout / kernel id, compare with the reference
# --------------------------------------------------------------------------------------------

def _data(shape, dtype, seed=0, ties=False):
    rng = np.random.default_rng(seed)
    if ties:  # small integers: many equal values, so the first-maximum rule is exercised
        return rng.integers(-3, 4, size=shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def _check_output(y, shape, dtype):
    assert y.shape == shape
    assert y.dtype == np.dtype(dtype)
    assert y.flags.c_contiguous


def _window_args(kh, kw):
    return (kh, kw) if (kh, kw) in pool.FIXED_WINDOWS else (0, 0)


def run_max(rt, x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=True):
    g = pool_geometry(x.shape, kernel_size, stride, padding, dilation, ceil_mode)
    y, idx, name = numpy_io(rt, pool.max_pool2d, x, g, return_indices)
    _check_output(y, g.output_shape, x.dtype)
    assert name == pool.max_name(x.dtype, return_indices, *_window_args(g.kh, g.kw))
    assert name in ops.INSTANTIATIONS[pool.SOURCE]
    ref_y, ref_idx = max_pool2d_ref(x, (g.kh, g.kw), (g.sh, g.sw), (g.ph, g.pw), (g.dh, g.dw), ceil_mode)
    np.testing.assert_array_equal(y, ref_y.astype(x.dtype))  # NaN == NaN here
    if return_indices:
        assert idx.dtype == np.int64 and idx.shape == g.output_shape and idx.flags.c_contiguous
        np.testing.assert_array_equal(idx, ref_idx)
    else:
        assert idx is None
    return g, y, idx


def run_avg(rt, x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
            divisor_override=None):
    g = pool_geometry(x.shape, kernel_size, stride, padding, 1, ceil_mode)
    y, name = numpy_io(rt, pool.avg_pool2d, x, g, count_include_pad, divisor_override)
    _check_output(y, g.output_shape, x.dtype)
    assert name == pool.avg_name(x.dtype, *_window_args(g.kh, g.kw))
    assert name in ops.INSTANTIATIONS[pool.SOURCE]
    window = ((g.kh, g.kw), (g.sh, g.sw), (g.ph, g.pw), ceil_mode, count_include_pad, divisor_override)
    expected = avg_pool2d_ref(x, *window)
    magnitude = np.abs(avg_pool2d_ref(np.abs(x), *window))
    assert_close(y, expected, magnitude, x.dtype, name, precision="pool")
    return g, y


def _adaptive_output(x, output_size):
    """The output (height, width) an ``output_size`` asks for (None: the input's)."""
    oh, ow = pair(output_size)
    return (x.shape[2] if oh is None else oh, x.shape[3] if ow is None else ow)


def run_adaptive_max(rt, x, output_size, return_indices=True):
    g = adaptive_geometry(x.shape, output_size)
    y, idx, name = numpy_io(rt, pool.adaptive_max_pool2d, x, g, return_indices)
    _check_output(y, g.output_shape, x.dtype)
    assert name == pool.adaptive_max_name(x.dtype, return_indices)
    assert name in ops.INSTANTIATIONS[pool.SOURCE]
    assert g.output_shape == x.shape[:2] + _adaptive_output(x, output_size)
    ref_y, ref_idx = adaptive_pool2d_ref(x, _adaptive_output(x, output_size), "max")
    np.testing.assert_array_equal(y, ref_y.astype(x.dtype))
    if return_indices:
        assert idx.dtype == np.int64 and idx.shape == g.output_shape
        np.testing.assert_array_equal(idx, ref_idx)
    else:
        assert idx is None
    return g, y, idx


def run_adaptive_avg(rt, x, output_size):
    g = adaptive_geometry(x.shape, output_size)
    y, name = numpy_io(rt, pool.adaptive_avg_pool2d, x, g)
    _check_output(y, g.output_shape, x.dtype)
    assert name == pool.adaptive_avg_name(x.dtype)
    assert name in ops.INSTANTIATIONS[pool.SOURCE]
    out_hw = _adaptive_output(x, output_size)
    magnitude = adaptive_pool2d_ref(np.abs(x), out_hw, "avg")
    assert_close(y, adaptive_pool2d_ref(x, out_hw, "avg"), magnitude, x.dtype, name, precision="pool")
    return g, y


# --------------------------------------------------------------------------------------------
# average pooling: ceil_mode x padding x count_include_pad x divisor_override, odd sizes
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kernel_size,stride", [((3, 3), 2), ((2, 2), 2), ((3, 2), (1, 2)), (3, 3)])
@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("pad", [0, 1])
@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("divisor_override", [None, 5])
def test_avg_matrix(rt, kernel_size, stride, ceil_mode, pad, count_include_pad, divisor_override):
    x = _data((2, 3, 7, 9), np.float32, seed=1)
    run_avg(rt, x, kernel_size, stride, pad, ceil_mode, count_include_pad, divisor_override)


def test_avg_edge_window_divisors(rt):
    # H=6, k=3, s=2, p=1, ceil_mode: windows start at -1, 1, 3, 5; the last holds cell 5, padding 6 and
    # the ceil_mode overhang 7, so count_include_pad divides by min(5+3, 6+1) - 5 = 2, not 3.
    x = np.ones((1, 1, 6, 6), dtype=np.float64)
    g, y = run_avg(rt, x, 3, 2, 1, ceil_mode=True, count_include_pad=True)
    assert g.OH == 4
    per_axis = np.array([2 / 3, 1.0, 1.0, 1 / 2])  # in-bounds cells / divisor along one axis
    np.testing.assert_allclose(y[0, 0], np.outer(per_axis, per_axis), rtol=1e-15)
    g, y = run_avg(rt, x, 3, 2, 1, ceil_mode=True, count_include_pad=False)
    np.testing.assert_array_equal(y, 1.0)  # averages of ones over in-bounds cells only
    g, y = run_avg(rt, x, 3, 2, 1, ceil_mode=True, divisor_override=4)
    cells = np.array([2, 3, 3, 1])
    np.testing.assert_allclose(y[0, 0], np.outer(cells, cells) / 4, rtol=1e-15)


def test_avg_negative_divisor_override(rt):
    run_avg(rt, _data((1, 2, 5, 5), np.float64), 2, 1, 1, divisor_override=-3)


# --------------------------------------------------------------------------------------------
# max pooling matrix: kernel x stride x padding x dilation x ceil_mode x return_indices
# --------------------------------------------------------------------------------------------

MAX_KERNELS = ((1, 1), (2, 2), (3, 3), (3, 2))
STRIDES = (None, 1, 2, 3, (1, 2))


@pytest.mark.parametrize("kernel_size", MAX_KERNELS)
@pytest.mark.parametrize("stride", STRIDES)
@pytest.mark.parametrize("max_pad", [False, True])
@pytest.mark.parametrize("ceil_mode", [False, True])
def test_max_matrix(rt, kernel_size, stride, max_pad, ceil_mode):
    kh, kw = kernel_size
    padding = (kh // 2, kw // 2) if max_pad else 0
    x = _data((2, 3, 7, 9), np.float32, seed=2, ties=True)
    for dilation, return_indices in ((1, True), ((2, 1), False), (2, True)):
        run_max(rt, x, kernel_size, stride, padding, dilation, ceil_mode, return_indices)


def test_semantics_examples(rt):
    # docs/semantics.md: H=6, k=1, s=2, ceil -> 3 (not 4); H=5, k=2, s=2, p=1, ceil -> 3 (not 4).
    x = _data((1, 2, 6, 6), np.float32, seed=3)
    g, y, _ = run_max(rt, x, 1, 2, 0, ceil_mode=True)
    assert (g.OH, g.OW) == (3, 3)
    np.testing.assert_array_equal(y, x[:, :, ::2, ::2])
    g, y = run_avg(rt, x, 1, 2, 0, ceil_mode=True)
    assert (g.OH, g.OW) == (3, 3)
    x = _data((1, 2, 5, 5), np.float32, seed=4)
    g, _, _ = run_max(rt, x, 2, 2, 1, ceil_mode=True)
    assert (g.OH, g.OW) == (3, 3)
    for cip in (True, False):
        g, _ = run_avg(rt, x, 2, 2, 1, ceil_mode=True, count_include_pad=cip)
        assert (g.OH, g.OW) == (3, 3)


def test_max_all_padding_dilated_window(rt):
    # k=2, d=3, p=1 over H=W=2: the only window's taps are -1 and 2, both outside the input. PyTorch
    # returns -inf and the index of the first tap >= 0 on the tap grid (2*W + 2 = 6, outside the plane).
    x = _data((1, 2, 2, 2), np.float32)
    g, y, idx = run_max(rt, x, 2, 1, 1, dilation=3)
    assert g.output_shape == (1, 2, 1, 1)
    assert np.all(np.isneginf(y)) and np.all(idx == 6)
    # Rows empty, columns not: still -inf for every window.
    x = _data((1, 1, 2, 5), np.float32)
    g, y, idx = run_max(rt, x, 2, 1, 1, dilation=(3, 1))
    assert np.all(np.isneginf(y))


# --------------------------------------------------------------------------------------------
# NaN and -inf
# --------------------------------------------------------------------------------------------

def test_max_nan_wins_last_nan_index(rt):
    x = np.zeros((1, 1, 4, 4), dtype=np.float32)
    x[0, 0, 0, 1] = np.nan
    x[0, 0, 1, 0] = np.nan  # later in row-major order than (0, 1)
    x[0, 0, 1, 1] = 5.0
    g, y, idx = run_max(rt, x, 3, 1)
    assert np.isnan(y[0, 0, 0, 0]) and idx[0, 0, 0, 0] == 1 * 4 + 0
    assert np.isnan(y[0, 0, 0, 1]) and idx[0, 0, 0, 1] == 1  # only (0, 1) in window cols 1..3
    assert y[0, 0, 1, 1] == 5.0 and idx[0, 0, 1, 1] == 5
    # adaptive max: same rule.
    g, y, idx = run_adaptive_max(rt, x, 1)
    assert np.isnan(y[0, 0, 0, 0]) and idx[0, 0, 0, 0] == 4


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_random(rt, dtype):
    x = _data((2, 2, 9, 8), dtype, seed=5, ties=True)
    x[np.random.default_rng(6).random(x.shape) < 0.15] = np.nan
    run_max(rt, x, 3, 2, 1, ceil_mode=True)
    run_max(rt, x, (3, 2), 1, 1, dilation=2)
    run_adaptive_max(rt, x, (4, 5))
    run_adaptive_max(rt, x, (4, 5), return_indices=False)
    g, y = run_avg(rt, x, 2, 1, 1)  # NaN propagates through the sum
    run_adaptive_avg(rt, x, 3)


def test_neg_inf(rt):
    x = np.full((1, 2, 5, 5), -np.inf, dtype=np.float32)
    g, y, idx = run_max(rt, x, 3, 2, 1)
    # All -inf: -inf with the window's first in-bounds cell as the index.
    assert np.all(np.isneginf(y))
    np.testing.assert_array_equal(idx[0, 0], [[0, 1, 3], [5, 6, 8], [15, 16, 18]])
    x[0, 1, 2, 3] = 1.0
    x[0, 0, ::2, ::2] = np.inf
    run_max(rt, x, 3, 2, 1)
    run_max(rt, x, 2, 1, 1, dilation=2)
    run_adaptive_max(rt, x, (2, 3))
    run_avg(rt, x, 2, 1, 1)  # -inf and inf: -inf, NaN
    run_adaptive_avg(rt, x, 2)


# --------------------------------------------------------------------------------------------
# adaptive
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("in_hw,out", [((7, 9), (3, 4)),        # non-divisible
                                       ((3, 4), (5, 7)),        # output larger than input
                                       ((6, 5), 1),             # global
                                       ((8, 8), (4, 2)),        # divisible
                                       ((5, 7), (None, 3)),     # None keeps the input size
                                       ((1, 1), (2, 3))])
def test_adaptive(rt, in_hw, out):
    x = _data((2, 3) + in_hw, np.float32, seed=7, ties=True)
    run_adaptive_max(rt, x, out, return_indices=True)
    run_adaptive_max(rt, x, out, return_indices=False)
    run_adaptive_avg(rt, x, out)


# --------------------------------------------------------------------------------------------
# dtypes, layout, several planes
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_dtypes(rt, dtype):
    x = _data((2, 3, 9, 7), dtype, seed=8)
    for k, s, p in (((2, 2), 2, 0), ((3, 3), 2, 1), ((3, 2), 1, 1)):
        for ri in (True, False):
            run_max(rt, x, k, s, p, 1, True, ri)
        run_avg(rt, x, k, s, p, ceil_mode=True, count_include_pad=False)
        run_avg(rt, x, k, s, p, divisor_override=3)
    run_adaptive_avg(rt, x, (4, 3))
    run_adaptive_max(rt, x, (4, 3))


def test_float16_sums_in_float32(rt):
    # 4096 ones: a float16 running sum would stop at 2048 (2048 + 1 rounds to 2048).
    x = np.ones((1, 1, 64, 64), dtype=np.float16)
    _, y = run_avg(rt, x, 64)
    assert y[0, 0, 0, 0] == 1.0
    _, y = run_adaptive_avg(rt, x, 1)
    assert y[0, 0, 0, 0] == 1.0


def test_non_contiguous_input(rt):
    base = _data((2, 8, 11, 3), np.float32, seed=9, ties=True)   # NHWC storage
    x = base.transpose(0, 3, 1, 2)                                # (2, 3, 8, 11) NCHW view
    assert not x.flags.c_contiguous
    run_max(rt, x, 3, 2, 1, ceil_mode=True)
    run_avg(rt, x, 3, 2, 1, ceil_mode=True)
    run_adaptive_max(rt, x, (3, 4))
    run_adaptive_avg(rt, x, (3, 4))
    y = x[:, :, ::-2, 1::2]  # negative and non-unit strides
    run_max(rt, y, 2)
    run_avg(rt, y, 2, 1, 1, count_include_pad=False)
    run_adaptive_avg(rt, y, (3, 2))


def test_indices_are_per_plane(rt):
    # Every plane holds its maximum at a different place; the index is h*W + w within that plane.
    N, C, H, W = 2, 3, 4, 5
    x = np.zeros((N, C, H, W), dtype=np.float64)
    for n, c in itertools.product(range(N), range(C)):
        p = n * C + c
        x[n, c, p % H, p % W] = 1.0 + p
    _, y, idx = run_adaptive_max(rt, x, 1)
    for n, c in itertools.product(range(N), range(C)):
        p = n * C + c
        assert y[n, c, 0, 0] == 1.0 + p and idx[n, c, 0, 0] == (p % H) * W + p % W
    _, _, idx2 = run_max(rt, x, (H, W))
    np.testing.assert_array_equal(idx2, idx)


# --------------------------------------------------------------------------------------------
# launch code
# --------------------------------------------------------------------------------------------

def test_kernel_ids_and_fixed_windows(rt):
    x = _data((1, 2, 6, 6), np.float32)
    def kernel_id(fn, a, *args):
        return numpy_io(rt, fn, a, *args)[-1]
    assert kernel_id(pool.max_pool2d, x, pool_geometry(x.shape, 3, 2), False) == \
        "gpuconv::max_pool2d<float, false, 3, 3>"
    assert kernel_id(pool.max_pool2d, x, pool_geometry(x.shape, 2), True) == "gpuconv::max_pool2d<float, true, 2, 2>"
    assert kernel_id(pool.max_pool2d, x, pool_geometry(x.shape, (3, 2)), True) == \
        "gpuconv::max_pool2d<float, true, 0, 0>"
    assert kernel_id(pool.avg_pool2d, x.astype(np.float16), pool_geometry(x.shape, 3), True, None) == \
        "gpuconv::avg_pool2d<gpuconv::half, 3, 3>"
    assert kernel_id(pool.avg_pool2d, x, pool_geometry(x.shape, 4), True, None) == "gpuconv::avg_pool2d<float, 0, 0>"
    assert kernel_id(pool.adaptive_avg_pool2d, x.astype(np.float64), adaptive_geometry(x.shape, 2)) == \
        "gpuconv::adaptive_avg_pool<double, 2>"
    assert kernel_id(pool.adaptive_max_pool2d, x, adaptive_geometry(x.shape, 2), False) == \
        "gpuconv::adaptive_max_pool<float, false, 2>"
    assert kernel_id(pool.max_pool2d, x, pool_geometry(x.shape, (1, 3), 2), True) == \
        "gpuconv::max_pool2d<float, true, 1, 3>"  # 1-D pooling's windows
    assert kernel_id(pool.avg_pool2d, x, pool_geometry(x.shape, (1, 2)), True, None) == \
        "gpuconv::avg_pool2d<float, 1, 2>"
    names = ops.INSTANTIATIONS[pool.SOURCE]
    # 3 dtypes x (max: 2 index modes x 5 windows; avg: 5 windows; adaptive max: 2 x (2-D, 3-D);
    # adaptive avg: 2-D, 3-D; max 3-D: 2; avg 3-D: 1)
    assert len(names) == len(set(names)) == 72


def test_no_index_array_without_return_indices(rt):
    spy = SpyRuntime(rt)
    x = _data((2, 3, 8, 8), np.float32)
    numpy_io(spy, pool.max_pool2d, x, pool_geometry(x.shape, 2), False)
    numpy_io(spy, pool.adaptive_max_pool2d, x, adaptive_geometry(x.shape, 3), False)
    for source, name, grid, block, args, _ in spy.launches:
        assert source == pool.SOURCE
        assert "false" in name
        assert args[2].dtype == np.int64 and args[2].size == 1  # placeholder, never written
    numpy_io(spy, pool.max_pool2d, x, pool_geometry(x.shape, 2), True)
    assert spy.launches[-1].args[2].shape == (2, 3, 4, 4)


def test_launch_shape_and_scalar_types(rt):
    spy = SpyRuntime(rt)
    x = _data((3, 5, 20, 20), np.float32)
    numpy_io(spy, pool.avg_pool2d, x, pool_geometry(x.shape, 3, 1, 1), False, 7)
    source, name, grid, block, args, _ = spy.launches[-1]
    assert source == pool.SOURCE
    assert block == (pool.POOL_BLOCK, 1, 1) and grid == (-(-3 * 5 * 400 // pool.POOL_BLOCK), 1, 1)
    assert isinstance(args[2], np.int64) and args[2] == 15          # planes
    assert all(isinstance(a, np.int32) for a in args[3:-1])
    assert isinstance(args[-1], np.int64) and args[-1] == 7         # divisor_override


def test_grid_stride_loop(rt, monkeypatch):
    # One block of 256 threads for 2*3*15*15 = 1350 outputs: every thread loops over several outputs.
    monkeypatch.setattr(limits, "MAX_GRID_BLOCKS", 1)
    x = _data((2, 3, 16, 16), np.float32, seed=10, ties=True)
    run_max(rt, x, 2, 1)
    run_avg(rt, x, 3, 1, 1)
    run_adaptive_max(rt, x, 15)
    run_adaptive_avg(rt, x, 15)


def test_int32_limits():
    g = PoolGeometry(N=1, C=1, H=2**31 - 2, W=4, kh=2, kw=2, sh=2, sw=2, ph=1, pw=0, dh=1, dw=1,
                     OH=2**30, OW=2)
    assert "exceeds 2^31-1" in pool.pool_int32_limit_reason(g)
    ok = PoolGeometry(N=1, C=1, H=1000, W=4, kh=2, kw=2, sh=2, sw=2, ph=1, pw=0, dh=1, dw=1, OH=501, OW=2)
    assert pool.pool_int32_limit_reason(ok) is None
    assert pool.pool_int32_limit_reason(AdaptiveGeometry(N=1, C=1, H=4, W=4, OH=2**31, OW=1)) is not None

    class _NoRuntime:
        xp = np

        def function(self, *a):
            raise AssertionError("must not launch")
    with pytest.raises(ValueError, match="exceeds 2"):
        pool.max_pool2d(_NoRuntime(), np.zeros((1, 1, 2, 2), np.float32), g, False)


def test_unsupported_dtype(rt):
    x = np.zeros((1, 1, 4, 4), dtype=np.int32)
    with pytest.raises(TypeError, match="float16, float32 and float64"):
        numpy_io(rt, pool.max_pool2d, x, pool_geometry(x.shape, 2), False)


# --------------------------------------------------------------------------------------------
# reversed thread order
# --------------------------------------------------------------------------------------------

def test_reversed_thread_order(rt):
    """Threads of each block run in reverse order (the kernels have no barriers, so nothing may change; on
    a GPU: the hardware's own order)."""
    rt_reversed = with_thread_order(rt, "reversed")
    x = _data((2, 3, 9, 10), np.float32, seed=11, ties=True)
    x[0, 1, 3, 3] = np.nan
    run_max(rt_reversed, x, 3, 2, 1, ceil_mode=True)
    run_max(rt_reversed, x, (3, 2), (1, 2), 1, dilation=2, return_indices=False)
    run_avg(rt_reversed, x, 3, 2, 1, ceil_mode=True, count_include_pad=False)
    run_avg(rt_reversed, x, 2, divisor_override=3)
    run_adaptive_max(rt_reversed, x, (4, 6))
    run_adaptive_avg(rt_reversed, x, (4, 6))
