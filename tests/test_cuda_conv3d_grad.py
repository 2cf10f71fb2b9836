"""conv3d's gradients on the CUDA path (issue 18): the filter gradient as ONE implicit GEMM over N*OD*P*Q
(``conv3d_backward_filter_igemm``, kernels/conv2d_backward_filter.cu: conv2d's backward-filter body with the
3-D gather geometry, fixed split ranges summed by ``gemm_splitk_reduce`` in order; depthwise layers:
``conv3d_backward_filter_depthwise``, the 2-D depthwise body with the 3-D geometry), the data gradient as ONE
``conv3d_backward_data`` launch over every stride phase (kernels/conv2d_backward_data.cu's body with the 3-D
geometry; its own tests: tests/test_cuda_nd_backward_data.py), and the bias gradient as
``conv2d_backward_bias`` over ``(N, K, 1, OD*P*Q)``.

Launch tests take the ``rt`` fixture (tests/runners.py: the CPU emulator, marked ``emulated``, and a GPU,
skipped without one) on NumPy data (``numpy_io``) and run under both thread orders (``with_thread_order``)
with bitwise-equal results. Everything is checked against the textbook gradients of tests/reference.py
(``conv_nd_grads_ref``, written from the definition) under the shared tolerance model, and against PyTorch
autograd (``torch.nn.grad.conv3d_input`` / ``conv3d_weight`` through ``F.conv3d``'s autograd, and
``F.conv_transpose3d``) where torch is installed: odd shapes that are not tile multiples, strides (larger
than the kernel too), dilation, asymmetric and 'same' padding, groups and depthwise, flip, the fused
activation derivative (kernel level: conv3d has no public backward with an activation), float16 / 32 / 64,
non-contiguous inputs, N = 0 / 1 / 3, several split counts. The record (``last_kernel()``) is checked too,
including the depth-tap lowering and its reason where a kernel declines. Host-side rules carry no marker.
Emulator only, slow: an AddressSanitizer build of the 3-D filter kernels over tile edges and paddings.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import gpuconv
import gpuconv.grad
from gpuconv._backend import CudaBackend, use_backend
from gpuconv._cuda import conv_backward_data as BD
from gpuconv._cuda import ops
from gpuconv._cuda import conv_backward_filter as B
from gpuconv._geometry import ACTIVATIONS
from gpuconv._geometry_nd import conv_nd_geometry
from tests.reference import conv_nd_grads_ref, explicit_padding_nd
from tests.runners import numpy_io, runtime_fixture, torch, with_thread_order
from tests.support import ACTIVATION_DERIVATIVES, activated_output, noncontiguous_view, triple
from tests.tolerance import assert_close

rt = runtime_fixture()

DTYPES = (np.float16, np.float32, np.float64)
ORDERS = ("forward", "reversed")
DERIVATIVES = ACTIVATION_DERIVATIVES  # d act / d z from the activated value (tests/support.py)

# x shape, w shape, stride, padding, dilation, groups, flip. N*OD*P*Q is never a multiple of BK (16 / 8),
# Cg*KD*R*S and Kg never of 64; "many-filters" has two filter tiles, "wide-taps" three column tiles.
CASES = {
    "plain": ((2, 3, 5, 6, 7), (4, 3, 3, 3, 3), 1, 1, 1, 1, False),
    "stride-gt-kernel-asym-groups-flip": ((1, 4, 9, 8, 10), (6, 2, 2, 3, 2), (3, 2, 4), ((1, 0), (0, 2), (1, 1)),
                                          1, 2, True),
    "dilated-same": ((3, 2, 6, 7, 5), (3, 2, 2, 3, 3), 1, "same", (2, 1, 2), 1, False),
    "same-even-flip": ((1, 3, 5, 6, 6), (2, 3, 2, 2, 3), 1, "same", 1, 1, True),
    "strided-dilated": ((2, 2, 8, 7, 9), (3, 2, 2, 2, 3), (2, 3, 2), (0, 1, 2), (3, 2, 1), 1, False),
    "many-filters": ((1, 2, 4, 5, 6), (70, 2, 3, 3, 2), 1, (1, 0, 1), 1, 1, False),
    "wide-taps": ((1, 5, 4, 5, 5), (3, 5, 3, 3, 3), 1, 0, 1, 1, False),
    "1x1x1-stride2-groups": ((2, 6, 5, 5, 5), (4, 3, 1, 1, 1), 2, 0, 1, 2, False),
    "depthwise-mult-stride": ((2, 4, 5, 6, 5), (8, 1, 3, 2, 3), (2, 1, 2), 1, 1, 4, True),
    "depthwise-3x3x3-dilated-same": ((1, 3, 6, 7, 8), (3, 1, 3, 3, 3), 1, "same", (1, 2, 1), 3, False),
}
DEPTHWISE = {"depthwise-mult-stride", "depthwise-3x3x3-dilated-same"}  # 27 taps: three DW_TAPS chunks


def _explicit(case):
    xs, ws, stride, padding, dilation, _, flip = CASES[case]
    stride, dilation = triple(stride), triple(dilation)
    return stride, explicit_padding_nd(padding, ws[2:], stride, dilation, xs[2:], flip), dilation


def _geometry(case, act=None, n=None):
    xs, ws, stride, padding, dilation, groups, flip = CASES[case]
    if n is not None:
        xs = (n,) + xs[1:]
    return conv_nd_geometry(3, xs, ws, None, stride, padding, dilation, groups, flip, act)


def _data(case, dtype, act=None, seed=0, layout="contiguous", n=None):
    """(geometry, x, w, gy, out): random data of ``dtype`` in ``layout`` (out: the activated forward output
    with zeros and, for relu / leaky_relu, NaNs, or None)."""
    g = _geometry(case, act, n)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((g.N, g.C) + g.input_size).astype(dtype)
    w = (rng.standard_normal(g.weight_shape) / 2).astype(dtype)
    gy = (2 * rng.standard_normal(g.output_shape)).astype(dtype)
    out = None
    if act is not None:  # zeros (relu 0, leaky_relu 0.01) and, for relu / leaky_relu, NaNs (as PyTorch)
        out = activated_output(g.output_shape, act, dtype, rng, layout, nans=act in ("relu", "leaky_relu"))
    x, w, gy = (noncontiguous_view(a, layout, rng) for a in (x, w, gy))
    return g, x, w, gy, out


def _reference(case, x, w, gy, out=None, act=None):
    """(gx, gx magnitude, gw, gw magnitude) in float64 from the definition (gy times the derivative first)."""
    groups, flip = CASES[case][5], CASES[case][6]
    gz = gy.astype(np.float64)
    if act is not None:
        gz = gz * DERIVATIVES[act](out.astype(np.float64))
    stride, pad, dilation = _explicit(case)
    gx, gw = conv_nd_grads_ref(x, w, gz, stride, pad, dilation, groups, flip)
    mx, mw = conv_nd_grads_ref(np.abs(x.astype(np.float64)), np.abs(w.astype(np.float64)), np.abs(gz), stride, pad,
                               dilation, groups, flip)
    return gx, mx, gw, mw


def _launch_filter(rt, x, gy, out, g, splits=None):
    launch = B.launch_depthwise3d if B.is_depthwise(g) else B.launch_igemm3d
    return numpy_io(rt, lambda rt, x, gy, out: launch(rt, x, gy, out, g, splits=splits), x, gy, out)


def _filter_name(case, dtype, act=0):
    return B.depthwise3d_name(dtype) if case in DEPTHWISE else B.igemm3d_name(dtype, act)


def _public(rt, fn, *arrays, **kwargs):
    """``fn(*arrays, **kwargs)`` on the CUDA path of ``rt`` (NumPy data in and out): ``(result, kernels)``."""
    def call(rt, *arrays):
        with use_backend(CudaBackend(rt)):
            result = fn(*arrays, **kwargs)
            return result, list(gpuconv.last_kernel().kernels)
    return numpy_io(rt, call, *arrays)


def _args(case):
    xs, ws, stride, padding, dilation, groups, flip = CASES[case]
    return dict(stride=stride, padding=padding, dilation=dilation, groups=groups, flip=flip)


# --------------------------------------------------------------------------------------------
# the filter-gradient kernel
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", list(CASES))
def test_filter_kernel_matches_reference_in_both_thread_orders(rt, case, dtype):
    g, x, w, gy, _ = _data(case, dtype)
    (gw, kid), (gw2, kid2) = [_launch_filter(with_thread_order(rt, o), x, gy, None, g) for o in ORDERS]
    assert kid == kid2 and kid.startswith(_filter_name(case, dtype) + " splits=")
    assert kid.endswith(" + gpuconv::gemm_splitk_reduce<" + B._ct(dtype) + ">")
    assert gw.dtype == dtype and gw.shape == CASES[case][1]
    _, _, exp, mag = _reference(case, x, w, gy)
    assert_close(gw, exp, mag, dtype, what=f"{case} {kid}")
    assert gw.tobytes() == gw2.tobytes()


@pytest.mark.parametrize("act", list(DERIVATIVES))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", ["stride-gt-kernel-asym-groups-flip", "depthwise-mult-stride"])
def test_filter_kernel_fuses_the_activation_derivative(rt, case, dtype, act):
    g, x, w, gy, out = _data(case, dtype, act, seed=1, layout="sliced")
    assert not out.flags.c_contiguous and not x.flags.c_contiguous
    gw, kid = _launch_filter(rt, x, gy, out, g)
    assert kid.startswith(_filter_name(case, dtype, ACTIVATIONS[act]) + " ")
    _, _, exp, mag = _reference(case, x, w, gy, out, act)
    assert_close(gw, exp, mag, dtype, what=f"{case} {act}")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("splits", [1, 2, 3, 8])
@pytest.mark.parametrize("case", ["dilated-same", "depthwise-3x3x3-dilated-same"])
def test_filter_kernel_split_counts_bitwise_in_both_orders_and_runs(rt, case, splits, dtype):
    g, x, w, gy, out = _data(case, dtype, "tanh", seed=3)
    runs = [_launch_filter(with_thread_order(rt, o), x, gy, out, g, splits) for o in ORDERS + ("forward",)]
    gw, kid = runs[0]
    m = g.N * int(np.prod(g.output_size))
    ranges, _ = B.ranges(m if case in DEPTHWISE else -(-m // B.igemm_tile(dtype).bk), splits)
    assert f" splits={ranges} + " in kid and (splits == 1 or ranges > 1)
    for other, k in runs[1:]:
        assert k == kid and other.tobytes() == gw.tobytes()
    _, _, exp, mag = _reference(case, x, w, gy, out, "tanh")
    assert_close(gw, exp, mag, dtype, what=f"{case} splits={splits}")


@pytest.mark.parametrize("layout", ["sliced", "transposed"])
@pytest.mark.parametrize("case", ["plain", "depthwise-mult-stride"])
def test_filter_kernel_noncontiguous_inputs(rt, case, layout):
    g, x, w, gy, _ = _data(case, np.float32, seed=2, layout=layout)
    assert not x.flags.c_contiguous and not gy.flags.c_contiguous
    gw, _ = _launch_filter(rt, x, gy, None, g)
    _, _, exp, mag = _reference(case, x, w, gy)
    assert_close(gw, exp, mag, np.float32, what=layout)


# --------------------------------------------------------------------------------------------
# the public gradients on the CUDA path
# --------------------------------------------------------------------------------------------

def _public_grads(rt, case, x, w, gy):
    kw = _args(case)
    gx, kx = _public(rt, lambda w, gy: gpuconv.grad.conv3d_input(x.shape, w, gy, **kw), w, gy)
    gw, kw_ = _public(rt, lambda x, gy: gpuconv.grad.conv3d_weight(x, CASES[case][1], gy, **kw), x, gy)
    gb, kb = _public(rt, gpuconv.grad.conv3d_bias, gy)
    return (gx, kx), (gw, kw_), (gb, kb)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", list(CASES))
def test_public_gradients_match_reference_and_record(rt, case, dtype):
    g, x, w, gy, _ = _data(case, dtype, seed=4, layout="sliced")
    results = [_public_grads(with_thread_order(rt, o), case, x, w, gy) for o in ORDERS]
    (gx, kx), (gw, kw), (gb, kb) = results[0]
    ex, mx, ew, mw = _reference(case, x, w, gy)
    assert gx.dtype == gw.dtype == gb.dtype == dtype
    assert_close(gx, ex, mx, dtype, what=f"{case} input gradient")
    assert_close(gw, ew, mw, dtype, what=f"{case} weight gradient")
    g64 = gy.astype(np.float64)
    assert_close(gb, g64.sum(axis=(0, 2, 3, 4)), np.abs(g64).sum(axis=(0, 2, 3, 4)), dtype, what="bias")
    # the record: the data gradient is ONE conv3d_backward_data launch over every stride phase (<= sd*sh*sw)
    sd, sh, sw = triple(CASES[case][2])
    phases = len(BD.plan(g, *g.input_size, *g.output_size))
    name = BD.kernel_name(dtype, BD.data_tile(g, dtype, *g.input_size), 0, 3)
    assert kx == [f"{name} phases={phases}"] and phases <= sd * sh * sw
    assert len(kw) == 1 and kw[0].startswith(_filter_name(case, dtype) + " splits=")
    assert kb == [B.bias_name(dtype)]
    for (a, ka), (b, kb2) in zip(results[0], results[1]):
        assert ka == kb2 and a.tobytes() == b.tobytes()  # bitwise, both thread orders


@pytest.mark.parametrize("n", [0, 1, 3])
def test_batch_sizes_and_unbatched(rt, n):
    case = "stride-gt-kernel-asym-groups-flip"
    g, x, w, gy, _ = _data(case, np.float32, seed=5, n=n)
    (gx, _), (gw, kw), (gb, _) = _public_grads(rt, case, x, w, gy)
    assert gx.shape == x.shape and gw.shape == w.shape and gb.shape == (w.shape[0],)
    if n == 0:
        assert not gw.any() and not gb.any() and kw == ["none (empty batch: zeros)"]
        return
    ex, mx, ew, mw = _reference(case, x, w, gy)
    assert_close(gx, ex, mx, np.float32, what="input")
    assert_close(gw, ew, mw, np.float32, what="weight")
    if n == 1:  # unbatched (C, D, H, W) / (K, OD, P, Q)
        kwargs = _args(case)
        gx1, _ = _public(rt, lambda w, gy: gpuconv.grad.conv3d_input(x.shape[1:], w, gy, **kwargs), w, gy[0])
        gw1, _ = _public(rt, lambda x, gy: gpuconv.grad.conv3d_weight(x, w.shape, gy, **kwargs), x[0], gy[0])
        assert gx1.tobytes() == gx[0].tobytes() and gw1.tobytes() == gw.tobytes()


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_conv_transpose3d_with_output_padding(rt, dtype):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 6, 3, 4, 3)).astype(dtype)
    w = (rng.standard_normal((6, 2, 2, 3, 2)) / 2).astype(dtype)  # (C_in, C_out/groups, T, R, S), groups 3
    b = rng.standard_normal(6).astype(dtype)
    kw = dict(stride=(2, 3, 2), padding=(1, 0, 1), output_padding=(1, 2, 0), groups=3, dilation=(1, 1, 2))
    y, ks = _public(rt, lambda x, w, b: gpuconv.conv_transpose3d(x, w, b, **kw), x, w, b)
    assert len(ks) == 1 and ks[0].startswith("gpuconv::conv3d_backward_data<")
    # the adjoint of the matching conv3d: gx of a (N, C_out, D', H', W') input with weight w
    g = conv_nd_geometry(3, y.shape, w.shape, None, kw["stride"], kw["padding"], kw["dilation"], 3)
    assert g.output_size == x.shape[2:]
    ex, _ = conv_nd_grads_ref(np.zeros(y.shape), w, x, kw["stride"], g.padding, kw["dilation"], 3, False)
    mx, _ = conv_nd_grads_ref(np.zeros(y.shape), np.abs(w.astype(np.float64)), np.abs(x.astype(np.float64)),
                              kw["stride"], g.padding, kw["dilation"], 3, False)
    ex = ex + b.astype(np.float64).reshape(1, -1, 1, 1, 1)
    assert_close(y, ex, mx + np.abs(b.astype(np.float64)).reshape(1, -1, 1, 1, 1), dtype, what="conv_transpose3d")
    if torch is not None and dtype == np.float64:
        t = torch.nn.functional.conv_transpose3d(torch.tensor(x), torch.tensor(w), torch.tensor(b), **kw)
        np.testing.assert_allclose(y, t.numpy(), rtol=1e-10, atol=1e-10)


@pytest.mark.skipif(torch is None, reason="PyTorch is not installed")
@pytest.mark.parametrize("case", list(CASES))
def test_against_torch_autograd(rt, case):
    """float64: conv3d's autograd (asymmetric / 'same' padding as F.pad, flip as flipped weights) and, for
    symmetric padding, torch.nn.grad.conv3d_input / conv3d_weight."""
    g, x, w, gy, _ = _data(case, np.float64, seed=7)
    (gx, _), (gw, _), (gb, _) = _public_grads(rt, case, x, w, gy)
    F = torch.nn.functional
    stride, pad, dilation = _explicit(case)
    groups, flip = CASES[case][5], CASES[case][6]
    xt, wt = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    pads = tuple(p for lo_hi in reversed(pad) for p in lo_hi)  # F.pad: last axis first
    y = F.conv3d(F.pad(xt, pads), wt.flip(2, 3, 4) if flip else wt, None, stride, 0, dilation, groups)
    y.backward(torch.tensor(gy))
    np.testing.assert_allclose(gx, xt.grad.numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(gw, wt.grad.numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(gb, gy.sum(axis=(0, 2, 3, 4)), rtol=1e-12, atol=1e-12)
    if not flip and all(lo == hi for lo, hi in pad):
        p = tuple(lo for lo, _ in pad)
        tx = torch.nn.grad.conv3d_input(x.shape, torch.tensor(w), torch.tensor(gy), stride, p, dilation, groups)
        tw = torch.nn.grad.conv3d_weight(torch.tensor(x), w.shape, torch.tensor(gy), stride, p, dilation, groups)
        np.testing.assert_allclose(gx, tx.numpy(), rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(gw, tw.numpy(), rtol=1e-10, atol=1e-10)


def _random_geometries(count, seed):
    """``count`` random valid 3-D calls ``(x shape, w shape, stride, padding, dilation, groups, flip)``: kernel
    1-3, stride 1-3 (often past the kernel), dilation 1-2, asymmetric padding 0-2 per side, groups 1-3."""
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < count:
        groups = int(rng.integers(1, 4))
        Cg, Kg = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        k, s, d = (tuple(int(v) for v in rng.integers(lo, hi, 3)) for lo, hi in ((1, 4), (1, 4), (1, 3)))
        pad = tuple((int(rng.integers(0, 3)), int(rng.integers(0, 3))) for _ in range(3))
        size = tuple(int(v) for v in rng.integers(1, 9, 3))
        if any(n + lo + hi < (kk - 1) * dd + 1 for n, (lo, hi), kk, dd in zip(size, pad, k, d)):
            continue
        out.append(((int(rng.integers(1, 4)), groups * Cg) + size, (groups * Kg, Cg) + k, s, pad, d, groups,
                    bool(rng.integers(0, 2))))
    return out


@pytest.mark.parametrize("geometry", _random_geometries(16, seed=18), ids=lambda g: f"{g[0]}-{g[1]}-s{g[2]}")
def test_random_geometries_match_reference(rt, geometry):
    """A seeded sweep of odd geometries (float64): both gradients from the public functions against the
    definition; the data gradient's phase count is the product of the axes' phases with taps."""
    xs, ws, stride, pad, dilation, groups, flip = geometry
    kw = dict(stride=stride, padding=pad, dilation=dilation, groups=groups, flip=flip)
    g = conv_nd_geometry(3, xs, ws, None, **kw)
    rng = np.random.default_rng(sum(xs) + sum(ws))
    x, w, gy = rng.standard_normal(xs), rng.standard_normal(ws), rng.standard_normal(g.output_shape)
    gx, kx = _public(rt, lambda w, gy: gpuconv.grad.conv3d_input(xs, w, gy, **kw), w, gy)
    gw, kw_ = _public(rt, lambda x, gy: gpuconv.grad.conv3d_weight(x, ws, gy, **kw), x, gy)
    ex, ew = conv_nd_grads_ref(x, w, gy, stride, pad, dilation, groups, flip)
    np.testing.assert_allclose(gx, ex, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(gw, ew, rtol=1e-10, atol=1e-10)
    assert len(kx) == 1 and kx[0].startswith("gpuconv::conv3d_backward_data<double")  # one launch, every phase
    assert len(kw_) == 1 and kw_[0].startswith(B.depthwise3d_name(np.float64) if B.is_depthwise(g)
                                               else B.igemm3d_name(np.float64))


@pytest.mark.skipif(torch is None, reason="PyTorch is not installed")
def test_conv_transpose3d_output_padding_past_the_stride(rt):
    """output_padding >= stride (allowed by a larger dilation): gy is shorter than the forward output of the
    result's size; the rows no output reads get the bias only, as in PyTorch."""
    rng = np.random.default_rng(9)
    x, w, b = rng.standard_normal((2, 4, 3, 4, 2)), rng.standard_normal((4, 3, 2, 2, 3)), rng.standard_normal(3)
    kw = dict(stride=(1, 2, 1), padding=(0, 1, 1), output_padding=(1, 2, 0), dilation=(2, 3, 1))
    y, ks = _public(rt, lambda x, w, b: gpuconv.conv_transpose3d(x, w, b, **kw), x, w, b)
    assert len(ks) == 1 and ks[0].startswith("gpuconv::conv3d_backward_data<double")
    t = torch.nn.functional.conv_transpose3d(torch.tensor(x), torch.tensor(w), torch.tensor(b), **kw)
    np.testing.assert_allclose(y, t.numpy(), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("which", ["data", "filter"])
def test_declined_kernel_runs_the_lowering_and_says_why(rt, monkeypatch, which):
    """Where the 3-D kernels decline (their 32-bit rules; forced here on a small case), the depth-tap lowering
    runs, its reason first in the record, with the same results to rounding."""
    case = "strided-dilated"
    g, x, w, gy, _ = _data(case, np.float64, seed=8)
    why = "a test's forced decline"
    if which == "data":
        monkeypatch.setattr(BD, "decline_reason", lambda g, dtype: why)
        fn = lambda w, gy: gpuconv.grad.conv3d_input(x.shape, w, gy, **_args(case))  # noqa: E731
        result, kernels = _public(rt, fn, w, gy)
        exp = _reference(case, x, w, gy)[0]
    else:
        algos = ops.operation("conv3d", "backward_filter").algorithms
        for name in algos:
            monkeypatch.setitem(algos, name, dataclasses.replace(algos[name], decline_reason=lambda g, dt: why))
        fn = lambda x, gy: gpuconv.grad.conv3d_weight(x, w.shape, gy, **_args(case))  # noqa: E731
        result, kernels = _public(rt, fn, x, gy)
        exp = _reference(case, x, w, gy)[2]
        why = f"{why}; {why}"  # both algorithms' reasons
    assert kernels[0] == f"conv3d depth-tap lowering ({why})"
    assert all(k.startswith("conv3d depth tap ") for k in kernels[1:]) and len(kernels) > 1
    np.testing.assert_allclose(result, exp, rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------------------------------------
# host-side rules
# --------------------------------------------------------------------------------------------

def test_phase_calls_partition_the_input():
    """The data kernel's phases (``conv_backward_data.plan``) partition the input, each phase's size is
    exactly its positions, and the positions of the phases without taps (which the kernel fills with
    zeros) are exactly those no tap reaches."""
    for case in CASES:
        g, x, w, gy, _ = _data(case, np.float32)
        phases = BD.plan(g, *g.input_size, *g.output_size)
        covered, tapless = np.zeros(g.input_size, dtype=int), np.zeros(g.input_size, dtype=bool)
        for (a, b, c, td, tr, tc, _, _, _, *counts) in phases:
            view = (slice(a, None, g.stride[0]), slice(b, None, g.stride[1]), slice(c, None, g.stride[2]))
            assert covered[view].shape == tuple(counts)
            covered[view] += 1
            tapless[view] = not (td and tr and tc)
        assert (covered == 1).all() and len(phases) <= int(np.prod(g.stride))
        # a tapless position is one no tap reaches: its gradient is zero for any gy (magnitudes of all-ones)
        reached = (_reference(case, x, w, np.ones_like(gy))[1] > 0).any(axis=(0, 1))
        assert not (reached & tapless).any()
        assert case != "1x1x1-stride2-groups" or tapless.sum() == 5 * 5 * 5 - 3 * 3 * 3


def test_filter_rules_declines_and_table():
    small = conv_nd_geometry(3, (2, 4, 5, 6, 7), (6, 2, 3, 3, 3), None, 1, 1, 1, 2)
    assert B.igemm3d_decline_reason(small, np.float32) is None
    # N*OD*P*Q = 2^31 + ...: the reduction index is an int
    big = conv_nd_geometry(3, (2**10, 1, 128, 128, 128), (1, 1, 1, 1, 1), None)
    assert "N*OD*P*Q" in B.igemm3d_decline_reason(big, np.float32)
    wide = conv_nd_geometry(3, (1, 2**12, 64, 128, 128), (1, 2**12, 1, 1, 1), None)
    assert "C/groups*D*H*W" in B.igemm3d_decline_reason(wide, np.float32)
    dw = conv_nd_geometry(3, (1, 4, 5, 5, 5), (8, 1, 3, 3, 3), None, 1, 1, 1, 4)
    assert "depthwise" in B.igemm3d_decline_reason(dw, np.float32)
    assert B.depthwise3d_decline_reason(dw, np.float32) is None
    assert "input channels per group" in B.depthwise3d_decline_reason(small, np.float32)
    with pytest.raises(ValueError, match="depthwise"):
        B.launch_igemm3d(None, np.zeros((1, 4, 5, 5, 5), np.float32), np.zeros((1, 8, 3, 3, 3), np.float32), None, dw)
    with pytest.raises(ValueError, match="depthwise declines"):
        B.launch_depthwise3d(None, np.zeros((2, 4, 5, 6, 7), np.float32), np.zeros((2, 6, 3, 4, 5), np.float32), None,
                             small)
    # depthwise: K = 8 blocks, 125 pixels < DW_MIN_PIXELS: one range
    assert B.splits_for(dw, np.float32, True) == 1 and B.workspace_bytes(dw, np.float32, 1) == 8 * 27 * 4
    # the split rule on the 3-D GEMM: 1 x 1 tiles, N*OD*P*Q = 2*5*6*7 = 420 pixels = 27 slices -> 3
    assert B.splits_for(small, np.float32, False) == min(-(-2 * B.SMS // 1), 27 // B.MIN_SLICES, B.SPLIT_MAX)
    assert B.workspace_bytes(small, np.float32, 3) == 3 * 6 * 2 * 27 * 4
    assert B.workspace_bytes(small, np.float64, 2) == 2 * 6 * 2 * 27 * 8
    o = ops.operation("conv3d", "backward_filter")
    assert o.names == ("depthwise", "igemm") and all(n in ops.INSTANTIATIONS[B.SOURCE] for n in B.INSTANTIATIONS)
    assert sum("conv3d_backward_filter_igemm" in n for n in B.INSTANTIATIONS) == 3 * len(B.ACTIVATION_CODES)
    assert sum("conv3d_backward_filter_depthwise" in n for n in B.INSTANTIATIONS) == 3


# --------------------------------------------------------------------------------------------
# memory safety: AddressSanitizer build
# --------------------------------------------------------------------------------------------

_ASAN_SCRIPT = r"""
import sys
sys.path.insert(0, sys.argv[1])
import numpy as np
from gpuconv._cuda import conv_backward_filter as B
from gpuconv._cuda.runtime import kernels_dir
from gpuconv._geometry_nd import conv_nd_geometry
from tests.emulator import EmulatedRuntime
from tests.reference import conv_nd_grads_ref

from gpuconv._cuda import conv_igemm
reduces = [conv_igemm.reduce_name(dt) for dt in (np.float16, np.float32, np.float64)]  # gemm_splitk_reduce
rt = EmulatedRuntime(kernels_dir(), {B.SOURCE: list(B.INSTANTIATIONS), conv_igemm.SOURCE: reduces}, sanitize=True)
rng = np.random.default_rng(0)
# partial filter tiles in the last group, partial column tiles, reduction tails, taps in every padding
# (front and back too), flip; depthwise with 27 taps (three chunks) and a channel multiplier
CASES = [
    ((2, 6, 3, 5, 7), (140, 3, 2, 3, 3), 2, 1, 1, 1, True, np.float32, "tanh"),
    ((1, 4, 4, 3, 13), (5, 4, 3, 1, 3), 1, (2, 1, 2), ((1, 2), (0, 1), (2, 0)), (1, 1, 2), False, np.float16, None),
    ((3, 8, 2, 4, 5), (6, 8, 2, 3, 2), 1, 1, (1, 0, 0), 1, False, np.float64, "relu"),
    ((2, 3, 4, 5, 6), (6, 1, 3, 3, 3), 3, (1, 2, 1), 1, (1, 1, 2), True, np.float32, "sigmoid"),
]
for xs, ws, groups, stride, padding, dilation, flip, dt, act in CASES:
    g = conv_nd_geometry(3, xs, ws, None, stride, padding, dilation, groups, flip, act)
    x = rng.standard_normal(xs).astype(dt)
    gy = rng.standard_normal(g.output_shape).astype(dt)
    out = None if act is None else rng.uniform(0.1, 0.9, g.output_shape).astype(dt)
    launch = B.launch_depthwise3d if B.is_depthwise(g) else B.launch_igemm3d
    for splits in (1, 3):
        gw, _ = launch(rt, x, gy, out, g, splits=splits)
        gz = gy.astype(np.float64)
        if act == "tanh":
            gz = gz * (1 - out.astype(np.float64) ** 2)
        elif act == "sigmoid":
            o = out.astype(np.float64)
            gz = gz * o * (1 - o)
        _, ref = conv_nd_grads_ref(x, np.zeros(ws), gz, g.stride, g.padding, g.dilation, groups, flip)
        tol = 5e-2 if dt == np.float16 else 1e-4
        assert np.allclose(ref, gw.astype(np.float64), rtol=tol, atol=tol), (xs, splits)
print("asan ok")
"""


@pytest.mark.emulated
@pytest.mark.slow  # a g++ AddressSanitizer build in a subprocess: CI runs it (-m slow)
def test_filter_kernels_no_out_of_bounds_access_under_asan():
    """The 3-D filter kernels at tile edges, compiled with -fsanitize=address: any read or write past x, gy,
    out or the workspace fails."""
    from pathlib import Path

    from tests.emulator import run_script_under_asan
    proc = run_script_under_asan(_ASAN_SCRIPT, Path(__file__).resolve().parent.parent)
    assert proc.returncode == 0 and "asan ok" in proc.stdout, (proc.stdout + proc.stderr)[-6000:]
