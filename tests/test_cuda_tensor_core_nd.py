"""``igemm_tc`` in 1-D and 3-D: ``conv1d_igemm_tc`` / ``conv3d_igemm_tc`` (kernels/conv1d_igemm_tc.cu,
conv3d_igemm_tc.cu: conv2d_igemm_tc's body, kernels/igemm_tc.cuh, with the 1-D / 3-D gather geometry), their
host side (gpuconv/_cuda/conv_igemm_tc.py ``ALGO_1D`` / ``ALGO_3D``), the forward plans that run them
(gpuconv/_conv_nd.py) and the heuristic's tiny-Cg rule (gpuconv/_cuda/select.py ``tensor_cores_pay``).

float32 is compared with the textbook N-D reference (tests/reference.py ``reference_conv_nd``) on
TF32-rounded inputs and weights (``tf32_round``, as the 2-D tensor-core tests: the bias is added unrounded),
at the float32 tolerance on the emulator (``precision="tf32"`` on a GPU, whose accumulation order is its own);
float16 at the float16 tolerance (exact products). PyTorch's ``F.conv1d`` / ``F.conv3d`` on the same rounded
operands is the second reference (skipped without torch).

Every test that launches a kernel takes the ``rt`` fixture (tests/runners.py): on the emulator
(``[emulated-...]``, marked ``emulated``) and on a GPU (``[gpu-...]``; skipped without one or below sm_80).
Each matrix case runs in both thread orders (``with_thread_order``: a missing barrier shows as the emulator's
NaN poison) and the two results must be equal byte for byte (the sums' order is fixed). Host-side rule tests
carry no marker.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import gpuconv
from gpuconv import cudnn
from gpuconv._backend import CudaBackend, use_backend
from gpuconv._cuda import conv1d_igemm, conv3d_igemm, conv_igemm_tc, ops, select
from gpuconv._cuda.conv_igemm_tc import TC_LARGE_TILE, TC_SMALL_TILE
from gpuconv._geometry import conv_geometry
from gpuconv._geometry_nd import conv_nd_geometry
from tests.cases import pairwise
from tests.reference import explicit_padding_nd, reference_conv_nd, tf32_round
from tests.runners import numpy_io, on_gpu, runtime_fixture, torch, with_thread_order
from tests.support import noncontiguous_view
from tests.tolerance import assert_close

ORDERS = ("forward", "reversed")
ALGOS = {1: conv_igemm_tc.ALGO_1D, 3: conv_igemm_tc.ALGO_3D}

rt = runtime_fixture(algo="igemm_tc")


@pytest.fixture
def tensor_cores():
    """Run with tensor cores allowed; restore the default afterwards."""
    gpuconv.set_tensor_cores(True)
    yield
    gpuconv.set_tensor_cores(None)


def _precision(rt, dtype):
    return "tf32" if on_gpu(rt) and np.dtype(dtype) == np.float32 else None


def _arrays(xs, ws, dt, bias=True, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(xs).astype(dt)
    w = rng.standard_normal(ws).astype(dt)
    b = rng.standard_normal(ws[0]).astype(dt) if bias else None
    return x, w, b


def _tf32(x, w):
    """The operands as the tensor cores multiply them: float32 rounded to TF32, float16 as is."""
    if np.dtype(x.dtype) == np.float32:
        return tf32_round(x), tf32_round(w)
    return x, w


def _reference(x, w, b, **kw):
    xr, wr = _tf32(x, w)
    return reference_conv_nd(xr, wr, b, **kw)


def _geometry(x, w, b, stride=1, padding=0, dilation=1, groups=1, flip=False, activation=None):
    return conv_nd_geometry(x.ndim - 2, x.shape, w.shape, None if b is None else b.shape, stride, padding, dilation,
                            groups, flip, activation)


def _launch(rt, x, w, b, g, tile=None):
    """The N-D igemm_tc launch on ``rt`` (y pre-filled with NaN: every element must be written)."""
    def call(rt, x, w, b):
        xp = rt.xp
        xc, wc = xp.ascontiguousarray(x), xp.ascontiguousarray(w)
        bc = wc if b is None else xp.ascontiguousarray(b)
        y = xp.full(g.output_shape, np.nan, dtype=x.dtype)
        return y, ALGOS[g.nd].launch(rt, xc, wc, bc, y, g, tile=tile)
    return numpy_io(rt, call, x, w, b)


def _check_both_orders(rt, x, w, b, kw, tile=None, what=""):
    """Both thread orders: each against the reference, and the two byte for byte equal. ``(y, kernel id)``."""
    g = _geometry(x, w, b, **kw)
    ref, mag = _reference(x, w, b, **kw)
    out = []
    for order in ORDERS:
        y, kid = _launch(with_thread_order(rt, order), x, w, b, g, tile)
        assert y.dtype == x.dtype and y.shape == ref.shape
        assert_close(y, ref, mag, x.dtype, f"{kid} {order} {what}", precision=_precision(rt, x.dtype))
        out.append(y)
    assert out[0].tobytes() == out[1].tobytes(), f"{kid}: results differ between thread orders"
    return out[0], kid


# --------------------------------------------------------------------------------------------
# the geometry matrices (pairwise), both thread orders, bitwise repeatable
# --------------------------------------------------------------------------------------------

# (C, K, groups): one group, two, depthwise, three groups; and Cg past the float32 large tile's BK of 16 and
# the small tile's 32 (two channel slices per tap, the last one partial).
CHANNELS = {"g1": (3, 5, 1), "g2": (4, 6, 2), "dw": (3, 3, 3), "g3x": (6, 9, 3), "c40": (40, 7, 1)}


def _t(v, n):
    return (v,) * n if isinstance(v, int) else tuple(v)


def _valid(c, n):
    size, k, s, d = c["size"], c["kernel"], _t(c["stride"], n), _t(c["dilation"], n)
    pad = explicit_padding_nd(c["padding"], k, s, d, size, c["flip"])
    return all(size[i] + sum(pad[i]) >= d[i] * (k[i] - 1) + 1 for i in range(n))


DIMS_1D = {
    "size": ((13,), (30,), (7,)), "kernel": ((1,), (3,), (5,), (2,)), "stride": (1, 2, 3), "dilation": (1, 2),
    "padding": (0, 2, (1,), ((2, 0),), ((0, 3),), "same", "valid"), "channels": tuple(CHANNELS),
    "flip": (False, True), "activation": (None, "relu", "leaky_relu", "sigmoid", "tanh"),
    "dtype": (np.float16, np.float32), "layout": ("contiguous", "sliced"), "bias": (True, False), "N": (1, 3),
}
DIMS_3D = {
    "size": ((3, 5, 7), (4, 4, 6), (2, 7, 3)), "kernel": ((1, 1, 1), (3, 3, 3), (2, 3, 1), (3, 1, 2)),
    "stride": (1, (2, 1, 2), (1, 3, 1)), "dilation": (1, (2, 1, 1), (1, 2, 2)),
    "padding": (0, 1, (1, 0, 2), ((2, 0), (0, 1), (1, 1)), "same", "valid"), "channels": tuple(CHANNELS),
    "flip": (False, True), "activation": (None, "relu", "leaky_relu", "sigmoid", "tanh"),
    "dtype": (np.float16, np.float32), "layout": ("contiguous", "sliced"), "bias": (True, False), "N": (1, 2),
}
CASES = {1: pairwise(DIMS_1D, lambda c: _valid(c, 1), seed=181),
         3: pairwise(DIMS_3D, lambda c: _valid(c, 3), seed=183)}


def _case_data(c, seed=0):
    rng = np.random.default_rng(seed)
    C, K, groups = CHANNELS[c["channels"]]
    x, w, b = _arrays((c["N"], C) + c["size"], (K, C // groups) + c["kernel"], c["dtype"], c["bias"], seed)
    x = noncontiguous_view(x, c["layout"], rng)
    w = noncontiguous_view(w, c["layout"], rng)
    kw = dict(stride=c["stride"], padding=c["padding"], dilation=c["dilation"], groups=groups, flip=c["flip"],
              activation=c["activation"])
    return x, w, b, kw


def _case_id(c):
    return "-".join(f"{k}={getattr(v, '__name__', v)}" for k, v in c.items()).replace(" ", "")


@pytest.mark.parametrize("case", CASES[1], ids=[_case_id(c) for c in CASES[1]])
def test_conv1d_igemm_tc_matches_reference(rt, case):
    x, w, b, kw = _case_data(case)
    _, kid = _check_both_orders(rt, x, w, b, kw)
    assert kid.startswith("gpuconv::conv1d_igemm_tc<")


@pytest.mark.parametrize("case", CASES[3], ids=[_case_id(c) for c in CASES[3]])
def test_conv3d_igemm_tc_matches_reference(rt, case):
    x, w, b, kw = _case_data(case)
    _, kid = _check_both_orders(rt, x, w, b, kw)
    assert kid.startswith("gpuconv::conv3d_igemm_tc<")


@pytest.mark.parametrize("nd", [1, 3])
@pytest.mark.parametrize("tile", ["small", "large"])
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_both_tiles_over_tile_edges(rt, nd, tile, dtype):
    """Each tile forced on a call with a partial last pixel tile, a partial filter tile (the small tile: two
    of them) and a tap's last channel slice partial (Cg = 37: past every BK but 64)."""
    t = {"small": TC_SMALL_TILE, "large": TC_LARGE_TILE}[tile]
    size = (70,) if nd == 1 else (3, 4, 5)
    k = (3,) if nd == 1 else (2, 2, 3)
    x, w, b = _arrays((2, 37) + size, (70, 37) + k, dtype, seed=3)
    kw = dict(padding=1, activation="relu")
    _, kid = _check_both_orders(rt, x, w, b, kw, tile=t)
    assert kid == conv_igemm_tc.gemm_kernel_name(f"conv{nd}d_igemm_tc", dtype, t)


@pytest.mark.parametrize("nd", [1, 3])
def test_batch_sizes_0_1_3(rt, nd):
    for n in (0, 1, 3):
        size, k = ((11,), (3,)) if nd == 1 else ((3, 4, 5), (2, 3, 2))
        x, w, b = _arrays((n, 6) + size, (5, 6) + k, np.float32, seed=n)
        if n == 0:
            g = _geometry(x, w, b, padding=1)
            y, kid = _launch(rt, x, w, b, g)
            assert y.shape == g.output_shape and y.size == 0
        else:
            _check_both_orders(rt, x, w, b, dict(padding=1))


@pytest.mark.skipif(torch is None, reason="PyTorch not installed")
@pytest.mark.parametrize("nd", [1, 3])
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_matches_pytorch(rt, nd, dtype):
    """F.conv1d / F.conv3d (float64, on the TF32-rounded operands) with stride, dilation, padding and groups."""
    F = torch.nn.functional
    size, k = ((23,), (3,)) if nd == 1 else ((5, 6, 7), (3, 2, 3))
    x, w, b = _arrays((2, 8) + size, (6, 4) + k, dtype, seed=5)
    kw = dict(stride=2, padding=1, dilation=(2,) * nd if nd == 1 else (1, 2, 1), groups=2)
    g = _geometry(x, w, b, **kw)
    y, kid = _launch(rt, x, w, b, g)
    xr, wr = _tf32(x, w)
    fn = F.conv1d if nd == 1 else F.conv3d
    ref = fn(torch.from_numpy(xr.astype(np.float64)), torch.from_numpy(wr.astype(np.float64)),
             torch.from_numpy(b.astype(np.float64)), **kw).numpy()
    _, mag = reference_conv_nd(np.abs(xr), np.abs(wr), np.abs(b), **kw)
    assert_close(y, ref, mag, dtype, kid, precision=_precision(rt, dtype))


# --------------------------------------------------------------------------------------------
# the public API, the plans, the policy, the decline path and its record
# --------------------------------------------------------------------------------------------

def _public(rt, fn, x, w, b=None, **kw):
    def call(rt, x, w, b):
        with use_backend(CudaBackend(rt)):
            return fn(x, w, b, **kw), gpuconv.last_kernel()
    return numpy_io(rt, call, x, w, b)


def _fma_kernel(rec, nd, ctype):
    """The record names conv1d_igemm / conv3d_igemm (unsplit or split-K) of C type ``ctype``, one entry."""
    (kid,) = rec.kernels
    return kid.startswith((f"gpuconv::conv{nd}d_igemm<{ctype}", f"gpuconv::conv{nd}d_igemm_splitk<{ctype}"))


@pytest.mark.parametrize("nd", [1, 3])
def test_public_algo_igemm_tc_runs_the_nd_kernel(rt, nd):
    fn = gpuconv.conv1d if nd == 1 else gpuconv.conv3d
    size, k = ((19,), (3,)) if nd == 1 else ((3, 5, 6), (2, 3, 3))
    for dtype in (np.float16, np.float32):
        x, w, b = _arrays((2, 8) + size, (10, 4) + k, dtype, seed=7)
        kw = dict(padding=1, groups=2, activation="tanh")
        y, rec = _public(rt, fn, x, w, b, algo="igemm_tc", **kw)
        assert (rec.op, rec.direction) == (f"conv{nd}d", "forward")
        assert rec.kernels == (conv_igemm_tc.gemm_kernel_name(f"conv{nd}d_igemm_tc", dtype, TC_SMALL_TILE),)
        ref, mag = _reference(x, w, b, **kw)
        assert_close(y, ref, mag, dtype, rec.kernel, precision=_precision(rt, dtype))


@pytest.mark.parametrize("nd", [1, 3])
def test_float64_named_is_declined(rt, nd):
    fn = gpuconv.conv1d if nd == 1 else gpuconv.conv3d
    x, w, b = _arrays((1, 4) + (9,) * nd, (3, 4) + (3,) * nd, np.float64)
    with pytest.raises(ValueError, match=rf"conv{nd}d_igemm_tc declines float64: its tensor-core products take "
                                         r"float32 \(as TF32\) or float16; use algo='igemm'"):
        _public(rt, fn, x, w, b, algo="igemm_tc")


@pytest.mark.parametrize("nd", [1, 3])
def test_auto_takes_tensor_cores_only_when_allowed_and_paying(rt, nd, tensor_cores):
    """'auto' on the N-D operation: igemm_tc once allowed (this fixture), not for float64, not for a tiny Cg
    (the select rule), and igemm when tensor cores are not allowed."""
    fn = gpuconv.conv1d if nd == 1 else gpuconv.conv3d
    size, k = ((21,), (3,)) if nd == 1 else ((3, 4, 5), (3, 3, 3))
    x, w, b = _arrays((1, 16) + size, (8, 16) + k, np.float32, seed=2)
    y, rec = _public(rt, fn, x, w, b, padding=1)
    assert rec.kernels[0].startswith(f"gpuconv::conv{nd}d_igemm_tc<float")
    ref, mag = _reference(x, w, b, padding=1)
    assert_close(y, ref, mag, np.float32, rec.kernel, precision=_precision(rt, np.float32))
    _, rec = _public(rt, fn, x.astype(np.float64), w.astype(np.float64), b.astype(np.float64), padding=1)
    assert _fma_kernel(rec, nd, "double")
    x3, w3, b3 = _arrays((1, 3) + size, (8, 3) + k, np.float32, seed=2)  # Cg = 3: mostly zeros on tensor cores
    _, rec = _public(rt, fn, x3, w3, b3, padding=1)
    assert _fma_kernel(rec, nd, "float")
    gpuconv.set_tensor_cores(False)
    _, rec = _public(rt, fn, x, w, b, padding=1)
    assert _fma_kernel(rec, nd, "float")


@pytest.mark.parametrize("nd", [1, 3])
def test_cudnn_tensor_core_always_runs_the_nd_kernel(rt, nd):
    """gpuconv.cudnn.convolution_forward(..., tensor_core='always') on 1-D / 3-D data runs conv1d_igemm_tc /
    conv3d_igemm_tc (recorded), float32 as TF32; tensor_core='never' keeps float32 on igemm."""
    size, k = ((17,), (3,)) if nd == 1 else ((4, 5, 6), (3, 3, 3))
    x, W, b = _arrays((2, 16) + size, (12, 16) + k, np.float32, seed=4)
    pad, stride, dil = (1,) * nd, (2,) + (1,) * (nd - 1), (1,) * nd
    kw = dict(stride=stride, padding=pad, dilation=dil)
    g = _geometry(x, W, b, **kw)

    def call(rt, x, W, b, y, tc):
        with use_backend(CudaBackend(rt)):
            cudnn.convolution_forward(x, W, b, y, pad, stride, dil, 1, auto_tune=False, tensor_core=tc)
            return y, gpuconv.last_kernel()

    y, rec = numpy_io(rt, call, x, W, b, np.empty(g.output_shape, np.float32), "always")
    assert rec.kernels == (conv_igemm_tc.gemm_kernel_name(f"conv{nd}d_igemm_tc", np.float32, TC_SMALL_TILE),)
    ref, mag = _reference(x, W, b, **kw)
    assert_close(y, ref, mag, np.float32, rec.kernel, precision=_precision(rt, np.float32))
    _, rec = numpy_io(rt, call, x, W, b, np.empty(g.output_shape, np.float32), "never")
    assert _fma_kernel(rec, nd, "float")


@pytest.mark.parametrize("nd", [1, 3])
def test_declined_geometry_falls_back_with_its_reason(rt, nd, monkeypatch):
    """Where the N-D tensor-core kernel declines (forced here): a policy's tensor-core answer runs the 2-D form
    (1-D: the height-1 view, 3-D: the depth-tap lowering) with that answer and the record gives the reason;
    'igemm_tc' by name raises it (no fallback)."""
    reason = f"conv{nd}d_igemm_tc declines this geometry because (forced by the test)"
    table = ops.operation(f"conv{nd}d").algorithms
    monkeypatch.setitem(table, "igemm_tc", dataclasses.replace(ALGOS[nd], decline_reason=lambda g, dt: reason))
    fn = gpuconv.conv1d if nd == 1 else gpuconv.conv3d
    x, w, b = _arrays((1, 8) + (7,) * nd, (4, 8) + (3,) * nd, np.float32, seed=6)
    y, rec = _public(rt, fn, x, w, b, padding=1, algo=lambda g2, dt, runtime: "igemm_tc")
    ref, mag = _reference(x, w, b, padding=1)
    assert_close(y, ref, mag, np.float32, "fallback", precision=_precision(rt, np.float32))
    if nd == 1:
        (kid,) = rec.kernels
        assert kid.startswith(f"conv1d as conv2d of height 1 ({reason}): gpuconv::conv2d_igemm_tc<")
    else:
        assert rec.kernels[0] == f"conv3d depth-tap lowering ({reason})"
        assert all("conv2d_igemm_tc" in k for k in rec.kernels[1:])
    with pytest.raises(ValueError, match=r"forced by the test"):
        _public(rt, fn, x, w, b, padding=1, algo="igemm_tc")


# --------------------------------------------------------------------------------------------
# host-side rules (nothing launched)
# --------------------------------------------------------------------------------------------

class OldGpu:
    """A runtime whose device predates tensor-core TF32 (compute capability 7.5); never launches."""
    name, xp = "old", np

    def compute_capability(self):
        return 75

    def function(self, *a):
        raise AssertionError("must not launch")


@pytest.mark.parametrize("nd", [1, 3])
def test_devices_below_sm80_are_declined(nd, tensor_cores):
    x, w, b = _arrays((1, 16) + (9,) * nd, (8, 16) + (3,) * nd, np.float32)
    fn = gpuconv.conv1d if nd == 1 else gpuconv.conv3d
    with use_backend(CudaBackend(OldGpu())):
        with pytest.raises(ValueError, match=r"igemm_tc needs a GPU of compute capability 8\.0 or newer; the "
                                             r"current device is 7\.5"):
            fn(x, w, b, algo="igemm_tc")
    g = _geometry(x, w, b)
    assert "igemm_tc" in select.candidates(g, np.float32, None, f"conv{nd}d")
    assert "igemm_tc" not in select.candidates(g, np.float32, OldGpu(), f"conv{nd}d")
    assert select.choose_algo(g, np.float32, OldGpu(), f"conv{nd}d") == "igemm"


def test_registered_for_conv1d_and_conv3d():
    for nd, a in ALGOS.items():
        assert ops.operation(f"conv{nd}d").algorithms["igemm_tc"] is a
        assert a.tensor_cores and a.min_compute_capability == 80
        assert ops.INSTANTIATIONS[a.source] == list(a.instantiations)
        assert set(a.instantiations) == {conv_igemm_tc.gemm_kernel_name(f"conv{nd}d_igemm_tc", dt, t)
                                         for dt in conv_igemm_tc.DTYPES for t in conv_igemm_tc.TILES}
    assert ops.operation("conv1d").names == ("igemm", "igemm_tc")
    assert ops.operation("conv3d").names == ("igemm", "igemm_tc")


def test_decline_rules_spell_the_nd_sizes():
    g1 = conv_nd_geometry(1, (1, 64, 2 ** 26), (8, 64, 3), None, 1, 0, 1, 1)
    assert conv_igemm_tc.ALGO_1D.decline_reason(g1, np.float32) == (
        "conv1d_igemm_tc declines this geometry because (C/groups rounded up to 64) * L = 4294967296 exceeds "
        "2^31-1, the largest size the CUDA conv1d kernels take")
    g3 = conv_nd_geometry(3, (1, 64, 256, 256, 512), (8, 64, 1, 1, 1), None, 1, 0, 1, 1)
    assert conv_igemm_tc.ALGO_3D.decline_reason(g3, np.float16) == (
        "conv3d_igemm_tc declines this geometry because (C/groups rounded up to 64) * D * H * W = 2147483648 "
        "exceeds 2^31-1, the largest size the CUDA conv3d kernels take")
    assert conv_igemm_tc.ALGO_3D.decline_reason(conv_nd_geometry(3, (1, 4, 5, 5, 5), (4, 4, 3, 3, 3), None, 1, 0,
                                                                  1, 1), np.float32) is None
    # the 2-D rule's sentences are unchanged
    g2 = conv_geometry((1, 64, 2 ** 13, 2 ** 13), (8, 64, 1, 1), None, 1, 0)
    assert "igemm_tc declines this geometry because (C/groups rounded up to 64) * H * W" in (
        conv_igemm_tc.ALGO.decline_reason(g2, np.float32))


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_nd_weight_packing_is_the_2d_packing_of_the_flattened_taps(dtype):
    """pack_weights on a 3-D filter is the 2-D packing of (K, Cg, KD*R, S) (taps in (t, r, s) order), on a 1-D
    filter the 2-D packing of its unit-height view: one packing, any number of dimensions."""
    rng = np.random.default_rng(0)
    w3 = rng.standard_normal((70, 5, 2, 3, 3)).astype(dtype)
    g3 = conv_nd_geometry(3, (1, 10, 4, 5, 6), w3.shape, None, 1, 0, 1, 2)
    g2 = conv_geometry((1, 10, 8, 6), (70, 5, 6, 3), None, 1, 0, 1, 2)
    for tile in conv_igemm_tc.TILES:
        p3 = conv_igemm_tc.pack_weights(np, w3, g3, tile)
        p2 = conv_igemm_tc.pack_weights(np, w3.reshape(70, 5, 6, 3), g2, tile)
        assert np.array_equal(p3, p2)
    w1 = rng.standard_normal((9, 40, 5)).astype(dtype)
    g1 = conv_nd_geometry(1, (2, 40, 30), w1.shape, None, 1, 0, 1, 1)
    p1 = conv_igemm_tc.pack_weights(np, w1, g1, TC_SMALL_TILE)
    assert np.array_equal(p1, conv_igemm_tc.pack_weights(np, w1[:, :, None, :], g1.as_2d(), TC_SMALL_TILE))


def test_tiny_cg_rule():
    """``select.tensor_cores_pay``: the useful share of igemm_tc's products (Cg of each tap's whole BK slices)
    against TC_MIN_USEFUL x igemm's (Cg*R*S of its BK = 16 slices)."""
    def g2(C, R=3, groups=1, K=32):
        return conv_geometry((2, C, 9, 9), (K, C // groups, R, R), None, 1, 1, 1, groups)
    f32, f16 = np.float32, np.float16
    # an RGB first layer (Cg = 3, 3x3): float32 small tile 3/32 of each mma, large 3/16: igemm
    assert not select.tensor_cores_pay(g2(3), f32) and not select.tensor_cores_pay(g2(3), f16)
    assert not select.tensor_cores_pay(conv_geometry((8, 3, 64, 64), (256, 3, 3, 3), None, 1, 1), f32)
    # Cg = 8: 8/32 = 0.25 of each float32 mma >= 0.25 * 72/80: tensor cores; float16's small tile 8/64 >= 0.125 * 0.9
    assert select.tensor_cores_pay(g2(8), f32) and select.tensor_cores_pay(g2(8), f16)
    assert not select.tensor_cores_pay(g2(4), f16) and not select.tensor_cores_pay(g2(7), f32)
    # a 1x1 filter over Cg = 3 pads igemm's reduction too (3 of 16): both waste alike, tensor cores win
    assert select.tensor_cores_pay(g2(3, R=1), f32)
    assert select.tensor_cores_pay(g2(64), f32) and select.tensor_cores_pay(g2(64), f16)
    assert not select.tensor_cores_pay(g2(64), np.float64)
    # the conv2d heuristic and the policy's order follow it (depthwise-like layers as before)
    assert select.conv_forward_order(g2(3))[0] == "igemm"
    assert select.conv_forward_order(g2(16))[0] == "igemm_tc"
    assert select.conv_forward_order(g2(16, groups=16, K=16))[0] == "depthwise"
    # N-D: on the call's GEMM view
    g1 = conv_nd_geometry(1, (2, 3, 50), (16, 3, 3), None, 1, 1, 1, 1)
    g3 = conv_nd_geometry(3, (2, 32, 4, 6, 6), (16, 32, 3, 3, 3), None, 1, 1, 1, 1)
    assert select.conv_nd_forward_order(g1, f32) == ("igemm",)
    assert select.conv_nd_forward_order(g3, f32) == ("igemm_tc", "igemm")
    assert select.conv_nd_forward_order(conv_nd_geometry(3, (2, 8, 4, 6, 6), (8, 1, 3, 3, 3), None, 1, 1, 1, 8),
                                        f16) == ("igemm",)


def test_tiny_cg_heuristic_picks_igemm_when_allowed(tensor_cores):
    g = conv_geometry((2, 3, 32, 32), (64, 3, 3, 3), None, 1, 1)
    assert "igemm_tc" in select.candidates(g, np.float32)
    assert select.choose_algo(g, np.float32) == "igemm"
    g16 = conv_geometry((2, 16, 32, 32), (64, 16, 3, 3), None, 1, 1)
    assert select.choose_algo(g16, np.float32) == "igemm_tc"
    g1 = conv_nd_geometry(1, (2, 3, 50), (16, 3, 3), None, 1, 1, 1, 1)
    assert select.choose_algo(g1, np.float32, None, "conv1d") == "igemm"
    g3 = conv_nd_geometry(3, (2, 32, 4, 6, 6), (16, 32, 3, 3, 3), None, 1, 1, 1, 1)
    assert select.choose_algo(g3, np.float32, None, "conv3d") == "igemm_tc"
    assert select.choose_algo(g3, np.float64, None, "conv3d") == "igemm"


def test_nd_views_are_the_nd_igemm_views():
    g1 = conv_nd_geometry(1, (2, 6, 30), (8, 3, 3), None, 2, 1, 1, 2)
    g3 = conv_nd_geometry(3, (2, 6, 4, 5, 6), (8, 3, 2, 3, 3), None, 1, 1, 1, 2)
    assert conv_igemm_tc.FAMILIES[1].view(g1) == conv1d_igemm.gemm_view(g1)
    assert conv_igemm_tc.FAMILIES[3].view(g3) == conv3d_igemm.gemm_view(g3)
    assert conv_igemm_tc.filter_taps(g3) == 18 and conv_igemm_tc.channel_stride(g3) == 120
