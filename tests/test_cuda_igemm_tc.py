"""``igemm_tc``: the implicit GEMM on tensor cores (kernels/conv2d_igemm_tc.cu, kernels/tensor_core.cuh) and
its host side (gpuconv/_cuda/conv_igemm_tc.py; the opt-in in autotune.py and conv.py).

On the CPU the emulator runs the kernel with its mma.sync emulated from the PTX ISA's fragment layouts
(tests/emulator), so the lanes' fragment reads, the tile and epilogue bounds and the TF32 rounding are
checked here. float32 is compared with the textbook reference computed on TF32-rounded inputs
(tests/reference.py: ``reference_conv2d_tf32``, rounding with ``tf32_round``), at the float32 tolerance
(tests/tolerance.py): a fragment in the wrong place, a missing rounding or an unrounded operand fails.
float16 is compared at the float16 tolerance (its products are exact). The geometry matrix is the kernel
suites' (tests/cases.py: ``KERNEL_CASES``, as test_cuda_conv); tile edges are test_cuda_igemm's
(``GEMM_EDGE_CASES``), with both tile configs forced and both thread orders.

Every test that launches a kernel takes the ``rt`` fixture (tests/runners.py) and runs twice: on the
emulator (``[emulated-...]``, marked ``emulated``) and on the real tensor cores of a GPU (``[gpu-...]``,
marked ``gpu``; skipped without CuPy or a device, and on a device below compute capability 8.0 with
igemm_tc's device rule as the reason), with the same NumPy test data (``numpy_io``). On a GPU, float32 is
compared at ``precision="tf32"`` (the hardware's float32 accumulation order is its own), and the reversed
thread order is the hardware's own order. Nothing here is emulator-only; host-side tests (the opt-in,
the device rule with a fake old GPU, the registry) carry no marker.
"""

from __future__ import annotations

import numpy as np
import pytest

import gpuconv
from gpuconv._cuda import autotune, conv, conv_igemm_tc, limits, select, settings
from gpuconv._cuda.conv_igemm_tc import TC_LARGE_TILE, TC_SMALL_TILE
from gpuconv._geometry import conv_geometry
from tests.cases import GEMM_EDGE_CASES, KERNEL_CASES, conv_arrays, kernel_case_data, kernel_case_id
from tests.reference import reference_conv2d_tf32, tf32_round
from tests.runners import (Runner, SpyRuntime, numpy_io, on_gpu, runtime_fixture, use_heuristic_auto,
                           with_thread_order)
from tests.support import check_conv, noncontiguous_view
from tests.tolerance import assert_close

TILES = {"small": TC_SMALL_TILE, "large": TC_LARGE_TILE}
ORDERS = ("forward", "reversed")

# The emulator and a GPU that igemm_tc's device rule accepts (tests/runners.py): every test that takes
# ``rt`` runs on both.
rt = runtime_fixture(algo="igemm_tc")


def _precision(rt, dtype):
    """The accumulation kind igemm_tc's result is compared at on ``rt`` (tests/tolerance.py): ``"tf32"`` for
    float32 on a GPU (the hardware's float32 accumulation order is its own), else the default."""
    return "tf32" if on_gpu(rt) and np.dtype(dtype) == np.float32 else None


def test_tf32_rounding_helper():
    """The reference's TF32 rounding (tests/reference.py), on values whose TF32 rounding is known."""
    ulp = 2.0 ** -10  # TF32 spacing in [1, 2)
    big = np.finfo(np.float32).max  # above the largest TF32 number plus half its spacing: rounds to inf
    x = np.array([1 + ulp / 2, 1 + ulp / 2 - 2.0 ** -23, -(1 + ulp / 2), 1 + 3 * ulp / 2, big, -np.inf, np.nan],
                 np.float32)
    r = tf32_round(x)
    assert r[0] == 1 + ulp and r[1] == 1 and r[2] == -(1 + ulp) and r[3] == 1 + 2 * ulp  # ties away from 0
    assert r[4] == np.inf and r[5] == -np.inf and np.isnan(r[6])


def _run(rt, x, *args, **kwargs):
    """igemm_tc through ``check_conv`` (tests/support.py: conv.conv2d, or the launch function with
    overrides), compared with ``reference_conv2d_tf32`` at ``_precision``. Returns (geometry, kernel name,
    output)."""
    return check_conv(rt, "igemm_tc", x, *args, reference=reference_conv2d_tf32,
                      precision=_precision(rt, x.dtype), **kwargs)


# --------------------------------------------------------------------------------------------
# the geometry matrix, tile edges, grid-stride loop, NaN / inf, TF32 rounding
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", KERNEL_CASES, ids=[kernel_case_id(c) for c in KERNEL_CASES])
def test_igemm_tc_matches_reference(rt, case):
    """The kernel suites' pairwise matrix (stride / padding / dilation / grouping / activation / flip / bias /
    non-contiguous layouts) through conv.conv2d(algo='igemm_tc'); float64 is declined by its rule."""
    g, x, w, b = kernel_case_data(case)
    rng = np.random.default_rng(1)
    xv, wv, bv = (noncontiguous_view(a, case["layout"], rng) for a in (x, w, b))
    if np.dtype(case["dtype"]) == np.float64:
        with pytest.raises(ValueError, match="igemm_tc declines float64"):
            numpy_io(rt, conv.conv2d, xv, wv, bv, g, "igemm_tc")
        return
    y, kid = numpy_io(rt, conv.conv2d, xv, wv, bv, g, "igemm_tc")
    assert kid == conv_igemm_tc.tc_name(case["dtype"], conv_igemm_tc.tc_tile_for(g, case["dtype"]))
    ref, mag = reference_conv2d_tf32(x, w, b, case["stride"], case["padding"], case["dilation"], g.groups, g.flip,
                        g.activation)
    assert_close(y, ref, mag, case["dtype"], kid, precision=_precision(rt, case["dtype"]))


def _edge_params():
    params = []
    for name in GEMM_EDGE_CASES:
        tiles = ["small"] if name.startswith("small") else ["large"] if name.startswith("large") \
            else ["small", "large"]
        for tile in tiles:
            for dt in conv_igemm_tc.DTYPES:
                for order in ORDERS:
                    params.append(pytest.param(name, tile, dt, order, id=f"{name}-{tile}-{dt.name}-{order}"))
    return params


@pytest.mark.parametrize("name, tile, dtype, order", _edge_params())
def test_igemm_tc_tile_edges(rt, name, tile, dtype, order):
    """Filters, pixels and reduction just below / at / above the tile sizes (test_cuda_igemm's cases; the
    channel slices around BK are tests/test_cuda_igemm_tc_pipeline.py's), each tile forced, both thread
    orders: with reversed threads a missing barrier reads an unstaged (NaN-poisoned) slice. (The geometry
    matrix's small shapes only ever take the small tile.)"""
    xs, ws, groups, stride, padding, dilation, flip, act, bias = GEMM_EDGE_CASES[name]
    x, w, b = conv_arrays(xs, ws, dtype, bias=bias, seed=len(name))
    _, kid, _ = _run(with_thread_order(rt, order), x, w, b, stride, padding, dilation, groups, flip, act,
                     tile=TILES[tile])
    assert kid == conv_igemm_tc.tc_name(dtype, TILES[tile])


def test_igemm_tc_grid_stride_loop(rt, monkeypatch):
    """A grid capped at 2 blocks for 12 tiles: each block loops, reusing shared memory tile after tile."""
    monkeypatch.setattr(limits, "MAX_GRID_BLOCKS", 2)  # launch_gemm's cap
    x, w, b = conv_arrays((2, 4, 9, 8), (140, 2, 3, 3), np.float16, seed=5)
    for order in ORDERS:
        spy = SpyRuntime(with_thread_order(rt, order))
        _run(spy, x, w, b, padding=1, groups=2, activation="relu", tile=TC_SMALL_TILE)
        assert spy.launches[-1].grid == (2, 1, 1)


@pytest.mark.parametrize("dtype", conv_igemm_tc.DTYPES)
def test_igemm_tc_nan_inf(rt, dtype):
    """NaN and inf in the input propagate through the mma as IEEE arithmetic; an inf weight over padding
    gives NaN (0 * inf), as every other kernel (padding zeros are multiplied)."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((1, 3, 12, 10)).astype(dtype)
    x[0, 0, 3, 4] = np.nan
    x[0, 2, 11, 9] = np.inf
    w = rng.standard_normal((5, 3, 3, 3)).astype(dtype)
    _, _, y = _run(rt, x, w, None, padding=1, activation="relu")
    assert np.isnan(y).any() and np.isinf(y).any()
    w2 = rng.standard_normal((2, 1, 3, 3)).astype(dtype)
    w2[0, 0, 0, 0] = np.inf  # over the top-left padding for output (0, 0)
    _, _, y2 = _run(rt, x[:, :1].copy(), w2, None, padding=1)
    assert np.isnan(y2[0, 0, 0, 0])


def test_igemm_tc_float32_is_tf32(rt):
    """Inputs 1 + 3*2^-12 (between the TF32 numbers 1 and 1 + 2^-10, nearer the upper) times weights 1, over
    288 taps. Rounded to TF32 each is 1 + 2^-10 and the sum is exactly 288 * (1 + 2^-10) = 288.28125; the
    float32 sum would be 288.21 and operands truncated to their top 19 bits (the tensor core's view of an
    operand nobody rounded) would give exactly 288. Only the TF32-rounded value passes."""
    x = np.full((1, 32, 4, 4), 1 + 3 * 2.0 ** -12, np.float32)
    w = np.ones((8, 32, 3, 3), np.float32)
    _, _, y = _run(rt, x, w, None)
    assert np.all(y == 288 * (1 + 2.0 ** -10))


# --------------------------------------------------------------------------------------------
# the opt-in, devices, 'auto'
# --------------------------------------------------------------------------------------------

@pytest.fixture
def tensor_cores():
    """Run with tensor cores allowed; restore the default afterwards."""
    gpuconv.set_tensor_cores(True)
    yield
    gpuconv.set_tensor_cores(None)


def _geom(C=16, K=32, groups=1, R=3):
    return conv_geometry((2, C, 9, 9), (K, C // groups, R, R), None, 1, 1, 1, groups)


def test_auto_leaves_tensor_cores_out_unless_allowed(monkeypatch):
    monkeypatch.delenv("GPUCONV_TENSOR_CORES", raising=False)
    gpuconv.set_tensor_cores(None)
    g = _geom()
    assert not settings.tensor_cores_enabled()
    assert "igemm_tc" not in select.candidates(g, np.float32)
    assert select.choose_algo(g, np.float32) == "igemm"
    monkeypatch.setenv("GPUCONV_TENSOR_CORES", "1")
    assert settings.tensor_cores_enabled() and "igemm_tc" in select.candidates(g, np.float32)
    gpuconv.set_tensor_cores(False)  # the call wins over the environment
    try:
        assert "igemm_tc" not in select.candidates(g, np.float32)
    finally:
        gpuconv.set_tensor_cores(None)


def test_auto_heuristic_prefers_tensor_cores_when_allowed(tensor_cores):
    assert select.choose_algo(_geom(), np.float32) == "igemm_tc"
    assert select.choose_algo(_geom(), np.float16) == "igemm_tc"
    assert select.choose_algo(_geom(R=1), np.float32) == "igemm_tc"
    assert select.choose_algo(_geom(), np.float64) == "igemm"  # declined: no float64 tensor-core path
    assert select.choose_algo(_geom(C=16, K=16, groups=16), np.float32) == "depthwise"


class OldGpu:
    """A runtime whose device predates tensor-core TF32 (compute capability 7.5); never launches."""
    name, xp = "old", np

    def compute_capability(self):
        return 75

    def function(self, *a):
        raise AssertionError("must not launch")


def test_devices_below_sm80_are_declined(tensor_cores):
    g = _geom()
    x, w, _ = conv_arrays((2, 16, 9, 9), (32, 16, 3, 3), np.float32)
    with pytest.raises(ValueError, match=r"igemm_tc needs a GPU of compute capability 8\.0 or newer; the "
                                         r"current device is 7\.5"):
        conv.conv2d(OldGpu(), x, w, None, g, "igemm_tc")
    assert "igemm_tc" not in select.candidates(g, np.float32, OldGpu())
    assert select.choose_algo(g, np.float32, OldGpu()) == "igemm"


def test_auto_runs_igemm_tc_when_allowed_and_keys_its_choice_apart(rt, tensor_cores, monkeypatch):
    """On the emulator (no timer), or with measuring off on a GPU, 'auto' takes the heuristic: igemm_tc once
    allowed, under a key of its own."""
    use_heuristic_auto(monkeypatch)
    x, w, b = conv_arrays((1, 8, 7, 7), (16, 8, 3, 3), np.float32, seed=9)
    g = conv_geometry(x.shape, w.shape, b.shape, padding=1)
    autotune.clear_autotune_cache()
    y, kid = numpy_io(rt, conv.conv2d, x, w, b, g, "auto")
    assert kid.startswith("gpuconv::conv2d_igemm_tc<float")
    ref, mag = reference_conv2d_tf32(x, w, b, padding=1)
    assert_close(y, ref, mag, np.float32, precision=_precision(rt, np.float32))
    keys = [c["key"] for c in gpuconv.autotune_choices()]
    assert any(k.endswith("|tensor cores") for k in keys)
    autotune.clear_autotune_cache()


def test_algo_registry_marks_tensor_cores():
    a = conv.OP.algorithms["igemm_tc"]
    assert a.tensor_cores and a.min_compute_capability == 80
    assert not any(conv.OP.algorithms[n].tensor_cores for n in conv.OP.names if n != "igemm_tc")
    assert set(a.instantiations) == {conv_igemm_tc.tc_name(dt, t) for dt in conv_igemm_tc.DTYPES
                                     for t in (TC_LARGE_TILE, TC_SMALL_TILE)}



def test_public_conv2d_runs_igemm_tc_and_records_it(rt):
    """``gpuconv.conv2d(..., algo='igemm_tc')`` through the public entry point (the shared matrices leave the
    tensor-core algorithms out): the result against the TF32 reference, and ``last_kernel()`` naming the
    kernel that ran, on the emulator and on a GPU."""
    runner = Runner("gpu" if on_gpu(rt) else "emulated", "igemm_tc")
    for dtype in conv_igemm_tc.DTYPES:
        x, w, b = conv_arrays((2, 6, 9, 11), (10, 3, 3, 3), dtype, seed=11)
        y = runner.call(gpuconv.conv2d, x, w, b, padding=1, groups=2, activation="relu")
        record = gpuconv.last_kernel()
        assert record.op == "conv2d" and record.backend == ("cupy" if on_gpu(rt) else "emulated")
        assert record.kernel.startswith("gpuconv::conv2d_igemm_tc<")
        ref, mag = reference_conv2d_tf32(x, w, b, padding=1, groups=2, activation="relu")
        assert_close(y, ref, mag, dtype, record.kernel, precision=_precision(rt, dtype))
