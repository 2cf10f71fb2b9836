"""The CUDA filter gradient (issue 17): ``kernels/conv2d_backward_filter.cu`` through its launch code
``gpuconv/_cuda/conv_backward_filter.py`` (``igemm``: implicit GEMM over N*P*Q with fixed split ranges;
``depthwise``; the bias kernel), and through the public functions.

Launch tests take the ``rt`` fixture (emulated and GPU, tests/runners.py) and check against the textbook
gradient of tests/reference.py (``conv_nd_grads_ref``, written from the definition) under the shared
tolerance model: stride, asymmetric and 'same' padding, dilation, groups, depthwise (with a channel
multiplier and more taps than a thread's DW_TAPS), flip, every activation (derivative fused, NaN rules),
float16 / float32 / float64, N = 1 / 3, sizes that are not tile multiples, non-contiguous inputs, several
split counts; bitwise equality between the emulator's two thread orders and between runs. Public-API tests:
``conv2d_backward`` with an activation runs no pre-pass for the filter / bias gradients, and agrees with
``torch.autograd``; the 3-D filter gradient runs their 3-D instantiation (tests/test_cuda_conv3d_grad.py). Host-side tests (the split rule, the
ranges, the workspace, the declines) carry no marker.
"""

from __future__ import annotations

import numpy as np
import pytest

import gpuconv
import gpuconv.grad
from gpuconv import _grad_conv as G
from gpuconv._backend import CudaBackend, use_backend
from gpuconv._cuda import conv_backward_filter as B
from gpuconv._cuda import ops
from gpuconv._geometry import ACTIVATIONS, conv_geometry
from tests.reference import apply_activation, conv_nd_grads_ref, explicit_padding, pair
from tests.runners import emulated_runtime, numpy_io, runtime_fixture, torch, with_thread_order
from tests.support import noncontiguous_view
from tests.tolerance import assert_close

rt = runtime_fixture()

DTYPES = (np.float16, np.float32, np.float64)
DERIVATIVES = {  # d act / d z from the activated value (docs/gradients.md); NaN > 0 is False
    None: lambda o: np.ones_like(o),
    "relu": lambda o: np.where(o > 0, 1.0, 0.0),
    "leaky_relu": lambda o: np.where(o > 0, 1.0, 0.01),
    "sigmoid": lambda o: (1 - o) * o,
    "tanh": lambda o: 1 - o * o,
}

# x shape, w shape, stride, padding, dilation, groups, flip. Cg*R*S and Kg are not multiples of 64 (the
# tile), N*P*Q not of 16 (BK); "many-filters" has two filter tiles, "wide-taps" two column tiles.
CASES = {
    "plain": ((3, 5, 9, 7), (6, 5, 3, 3), 1, 1, 1, 1, False),
    "stride-asym-dil-groups-flip": ((1, 6, 11, 10), (4, 3, 3, 2), 2, ((1, 0), (2, 1)), (2, 1), 2, True),
    "same-even-flip": ((3, 4, 8, 7), (5, 4, 4, 3), 1, "same", (1, 2), 1, True),
    "many-filters-same-stride": ((1, 3, 9, 8), (70, 3, 2, 3), (2, 3), "same", 1, 1, False),
    "wide-taps": ((1, 13, 7, 6), (3, 13, 3, 3), 1, 0, 1, 1, False),
    "1x1-groups": ((3, 8, 5, 7), (6, 4, 1, 1), 1, 0, 1, 2, False),
    "dw-flip-dil": ((3, 4, 9, 7), (4, 1, 3, 3), 1, 1, 2, 4, True),
    "dw-mult-stride-asym": ((1, 3, 11, 10), (6, 1, 5, 3), 2, ((2, 1), (0, 1)), 1, 3, False),
    "dw-7x5": ((1, 2, 12, 13), (2, 1, 7, 5), 1, 3, 1, 2, False),
}
DEPTHWISE = {"dw-flip-dil", "dw-mult-stride-asym", "dw-7x5"}


def _explicit(case):
    xs, ws, stride, padding, dilation, _, flip = CASES[case]
    stride, dilation = pair(stride), pair(dilation)
    pt, pb, pl, pr = explicit_padding(padding, ws[2:], stride, dilation, xs[2:], flip)
    return stride, ((pt, pb), (pl, pr)), dilation


def _data(case, dtype, act=None, seed=0, layout="contiguous"):
    xs, ws, stride, padding, dilation, groups, flip = CASES[case]
    g = conv_geometry(xs, ws, None, stride, padding, dilation, groups, flip, act)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(xs).astype(dtype)
    gy = (4 * rng.standard_normal(g.output_shape)).astype(dtype)
    out = None
    if act is not None:
        out = noncontiguous_view(apply_activation(rng.standard_normal(g.output_shape), act).astype(dtype),
                                 layout, rng)
        out.flat[::7] = 0  # the derivative at 0 (relu 0, leaky_relu 0.01)
        if act in ("relu", "leaky_relu"):
            out.flat[3::11] = np.nan  # NaN out: 0 (relu) or the slope (leaky_relu), as PyTorch
    x, gy = noncontiguous_view(x, layout, rng), noncontiguous_view(gy, layout, rng)
    return g, x, gy, out


def _reference(case, x, gy, out, act):
    """(gw, magnitude) in float64 from the definition, gy times the activation's derivative first."""
    ws, groups, flip = CASES[case][1], CASES[case][5], CASES[case][6]
    gz = gy.astype(np.float64)
    if act is not None:
        gz = gz * DERIVATIVES[act](out.astype(np.float64))
    stride, pad, dilation = _explicit(case)
    w0 = np.zeros(ws)
    _, gw = conv_nd_grads_ref(x, w0, gz, stride, pad, dilation, groups, flip)
    _, mag = conv_nd_grads_ref(np.abs(x.astype(np.float64)), w0, np.abs(gz), stride, pad, dilation, groups, flip)
    return gw, mag


def _launch(case):
    return B.launch_depthwise if case in DEPTHWISE else B.launch_igemm


def _run(rt, case, x, gy, out, g, splits=None):
    return numpy_io(rt, lambda rt, x, gy, out: _launch(case)(rt, x, gy, out, g, splits=splits), x, gy, out)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", list(CASES))
def test_matches_reference_in_both_thread_orders(rt, case, dtype):
    g, x, gy, _ = _data(case, dtype)
    results = [_run(with_thread_order(rt, order), case, x, gy, None, g) for order in ("forward", "reversed")]
    (gw, kid), (gw2, kid2) = results
    assert kid == kid2 and kid.startswith(B.depthwise_name(dtype) if case in DEPTHWISE else B.igemm_name(dtype))
    assert gw.dtype == dtype and gw.shape == CASES[case][1]
    exp, mag = _reference(case, x, gy, None, None)
    assert_close(gw, exp, mag, dtype, what=f"{case} {kid}")
    assert gw.tobytes() == gw2.tobytes()


@pytest.mark.parametrize("act", ["relu", "leaky_relu", "sigmoid", "tanh"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", ["stride-asym-dil-groups-flip", "dw-mult-stride-asym"])
def test_fused_activation_derivative(rt, case, dtype, act):
    g, x, gy, out = _data(case, dtype, act, seed=1, layout="transposed")
    assert not x.flags.c_contiguous and not out.flags.c_contiguous
    gw, kid = _run(rt, case, x, gy, out, g)
    assert case in DEPTHWISE or kid.startswith(B.igemm_name(dtype, ACTIVATIONS[act]) + " ")
    exp, mag = _reference(case, x, gy, out, act)
    assert_close(gw, exp, mag, dtype, what=f"{case} {act}")
    # out is read only with an activation: without one (None) the same gy gives the plain gradient
    gw0, _ = _run(rt, case, x, gy, None, g)
    assert_close(gw0, *_reference(case, x, gy, None, None), dtype, what=f"{case} no activation")


@pytest.mark.parametrize("layout", ["sliced", "transposed"])
@pytest.mark.parametrize("case", ["plain", "dw-flip-dil"])
def test_noncontiguous_inputs(rt, case, layout):
    g, x, gy, _ = _data(case, np.float32, seed=2, layout=layout)
    assert not x.flags.c_contiguous and not gy.flags.c_contiguous
    gw, _ = _run(rt, case, x, gy, None, g)
    assert_close(gw, *_reference(case, x, gy, None, None), np.float32, what=f"{case} {layout}")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("splits", [1, 2, 3, 8])
@pytest.mark.parametrize("case", ["plain", "same-even-flip", "dw-flip-dil"])
def test_split_counts_bitwise_in_both_orders_and_runs(rt, case, splits, dtype):
    g, x, gy, out = _data(case, dtype, "tanh", seed=3)
    runs = [_run(with_thread_order(rt, order), case, x, gy, out, g, splits)
            for order in ("forward", "reversed", "forward")]
    gw, kid = runs[0]
    m = g.N * g.P * g.Q
    total = m if case in DEPTHWISE else -(-m // B.igemm_tile(dtype).bk)
    ranges, _ = B.ranges(total, splits)
    assert f" splits={ranges} + " in kid and (splits == 1 or ranges > 1)
    for other, k in runs[1:]:
        assert k == kid and other.tobytes() == gw.tobytes()
    assert_close(gw, *_reference(case, x, gy, out, "tanh"), dtype, what=f"{case} splits={splits}")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("act", [None, "relu", "sigmoid"])
def test_bias_kernel(rt, dtype, act):
    g, _, gy, out = _data("plain", dtype, act, seed=4, layout="sliced")
    gb, kid = numpy_io(rt, lambda rt, gy, out: B.launch_bias(rt, gy, out, g), gy, out)
    gb2, _ = numpy_io(with_thread_order(rt, "reversed"), lambda rt, gy, out: B.launch_bias(rt, gy, out, g), gy, out)
    assert kid == B.bias_name(dtype) and gb.dtype == dtype and gb.tobytes() == gb2.tobytes()
    gz = gy.astype(np.float64) * (1 if act is None else DERIVATIVES[act](out.astype(np.float64)))
    assert_close(gb, gz.sum(axis=(0, 2, 3)), np.abs(gz).sum(axis=(0, 2, 3)), dtype, what="bias")


# --------------------------------------------------------------------------------------------
# through the public functions (emulated): no pre-pass, PyTorch, the record, 3-D
# --------------------------------------------------------------------------------------------

@pytest.mark.emulated
@pytest.mark.parametrize("act", ["relu", "leaky_relu", "sigmoid", "tanh"])
@pytest.mark.parametrize("case", ["same-even-flip", "dw-mult-stride-asym"])
def test_conv2d_backward_fuses_the_activation(monkeypatch, case, act):
    """With output_mask (False, True, True) on the CUDA path the derivative is applied by the kernels:
    the pre-pass (activation_derivative_times) is never called; results as torch.autograd's (float64)."""
    xs, ws, stride, padding, dilation, groups, flip = CASES[case]
    rng = np.random.default_rng(5)
    x, w, b = rng.standard_normal(xs), rng.standard_normal(ws) / 3, rng.standard_normal(ws[0])
    out = gpuconv.conv2d(x, w, b, stride, padding, dilation, groups, flip=flip, activation=act)
    gy = rng.standard_normal(out.shape)

    def no_prepass(*a, **k):
        raise AssertionError("pre-pass called")
    monkeypatch.setattr(G, "activation_derivative_times", no_prepass)
    with use_backend(CudaBackend(emulated_runtime())):
        _, gw, gb = G.conv2d_backward(gy, x, w, stride, padding, dilation, groups, flip=flip, activation=act,
                                      output=out, output_mask=(False, True, True))
        kernels = gpuconv.last_kernel().kernels
    algo = "depthwise" if case in DEPTHWISE else "igemm"
    name = B.depthwise_name(np.float64) if algo == "depthwise" else B.igemm_name(np.float64, ACTIVATIONS[act])
    assert kernels[0].startswith(name) and kernels[1] == B.bias_name(np.float64)
    stride2, pad, dilation2 = _explicit(case)
    gz = gy * DERIVATIVES[act](out)
    _, ew = conv_nd_grads_ref(x, w, gz, stride2, pad, dilation2, groups, flip)
    np.testing.assert_allclose(gw, ew, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(gb, gz.sum(axis=(0, 2, 3)), rtol=1e-10, atol=1e-10)
    if torch is not None:
        F = torch.nn.functional
        pt, pb, pl, pr = pad[0] + pad[1]
        xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
        z = F.conv2d(F.pad(xt, (pl, pr, pt, pb)), wt.flip(2, 3) if flip else wt, bt, stride2, 0, dilation2, groups)
        y = {"relu": F.relu, "leaky_relu": F.leaky_relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh}[act](z)
        y.backward(torch.tensor(gy))
        np.testing.assert_allclose(gw, wt.grad.numpy(), rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(gb, bt.grad.numpy(), rtol=1e-10, atol=1e-10)


@pytest.mark.emulated
def test_conv2d_weight_and_3d_use_the_kernels():
    rng = np.random.default_rng(6)
    x, gy = rng.standard_normal((2, 4, 7, 6)).astype(np.float32), rng.standard_normal((2, 6, 5, 4)).astype(np.float32)
    with use_backend(CudaBackend(emulated_runtime())):
        G.conv2d_weight(x, (6, 2, 3, 3), gy, groups=2)
        assert gpuconv.last_kernel().kernels[0].startswith(B.igemm_name(np.float32))
        x3 = rng.standard_normal((1, 2, 5, 6, 7))
        gy3 = rng.standard_normal((1, 3, 3, 4, 5))
        gw3 = gpuconv.grad.conv3d_weight(x3, (3, 2, 3, 3, 3), gy3)
        assert gpuconv.last_kernel().kernels == (f"{B.igemm3d_name(np.float64)} splits=1 + "
                                                 f"gpuconv::gemm_splitk_reduce<double>",)
    _, ew = conv_nd_grads_ref(x3, np.zeros((3, 2, 3, 3, 3)), gy3, (1, 1, 1), ((0, 0),) * 3, (1, 1, 1), 1, False)
    np.testing.assert_allclose(gw3, ew, rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------------------------------------
# host-side rules
# --------------------------------------------------------------------------------------------

def test_split_rule_ranges_and_workspace():
    # conv5-like at N=1: 512 x 4608 per group -> 8 x 72 = 576 tiles: no split
    g = conv_geometry((1, 512, 7, 7), (512, 512, 3, 3), None, 1, 1)
    assert B.splits_for(g, np.float32, False) == 1
    # LeNet conv2-like at N=64: 1 x 3 tiles, N*P*Q = 6400 pixels = 400 slices -> min(88, 50, 8) = 8
    g = conv_geometry((64, 6, 14, 14), (16, 6, 5, 5), None, 1, 0)
    assert B.splits_for(g, np.float32, False) == 8
    assert B.workspace_bytes(g, np.float16, 8) == 8 * 16 * 150 * 4
    assert B.workspace_bytes(g, np.float64, 2) == 2 * 16 * 150 * 8
    # short reduction: 3*5*5 = 75 pixels = 5 slices < 2 * MIN_SLICES -> 1
    g = conv_geometry((3, 6, 9, 9), (16, 6, 5, 5), None, 1, 0)
    assert B.splits_for(g, np.float32, False) == 1
    # depthwise, 32 channels, 112x112 at N=1: 12544 pixels -> min(9, 12, 8) = 8; 1024 channels -> 1
    g = conv_geometry((1, 32, 112, 112), (32, 1, 3, 3), None, 1, 1, 1, 32)
    assert B.splits_for(g, np.float32, True) == 8
    g = conv_geometry((1, 1024, 7, 7), (1024, 1, 3, 3), None, 1, 1, 1, 1024)
    assert B.splits_for(g, np.float32, True) == 1
    # between one and two waves of blocks: 144 filters -> ceil(264 / 144) = 2 (MobileNetV2's dw 144)
    g = conv_geometry((32, 144, 56, 56), (144, 1, 3, 3), None, 1, 1, 1, 144)
    assert B.splits_for(g, np.float32, True) == 2
    assert B.ranges(18, 4) == (4, 5) and B.ranges(9, 8) == (5, 2) and B.ranges(7, 1) == (1, 7)
    assert B.SPLIT_MAX == 8


def test_table_order_and_declines():
    o = ops.operation("conv2d", "backward_filter")
    assert o.names == ("depthwise", "igemm")
    from gpuconv._cuda.select import choose_algo
    dw = conv_geometry((1, 4, 8, 8), (8, 1, 3, 3), None, 1, 1, 1, 4)
    dense = conv_geometry((1, 4, 8, 8), (8, 2, 3, 3), None, 1, 1, 1, 2)
    assert choose_algo(dw, np.float32, None, "conv2d", "backward_filter") == "depthwise"
    assert choose_algo(dense, np.float32, None, "conv2d", "backward_filter") == "igemm"
    assert "depthwise declines" in B.depthwise_decline_reason(dense, np.float32)
    big = conv_geometry((2**16, 1, 200, 200), (1, 1, 1, 1), None, 1, 0)  # N*P*Q = 2.6e9
    assert "N*P*Q" in B.igemm_decline_reason(big, np.float32)
    from gpuconv._conv_lowering import cuda_filter_algo
    assert cuda_filter_algo(CudaBackend(emulated_runtime()), big, np.float32) is None
    with pytest.raises(ValueError, match="splits"):
        B.launch_igemm(None, np.zeros((1, 4, 8, 8), np.float32), np.zeros((1, 8, 8, 8), np.float32), None,
                       dense, splits=9)
    assert all(n in ops.INSTANTIATIONS[B.SOURCE] for n in B.INSTANTIATIONS)
