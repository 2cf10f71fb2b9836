"""The CUDA data gradient with the activation's derivative fused (issue 17): ``conv2d_backward_data<T, tile,
ACT>`` (``kernels/conv2d_backward_data.cu``; the gather of ``kernels/im2col_loader.cuh`` with its DACT
parameter), launched once for every stride phase by ``gpuconv/_cuda/conv_backward_data.py`` when
``conv2d_backward`` has an activation. (The plain data gradient: tests/test_cuda_backward_data.py.)

* Launch level (``rt`` fixture: emulator, both thread orders, and a GPU): every activation, float16 /
  float32 / float64, stride 1 / 2 / 3 (phases without taps), padding incl. asymmetric, dilation, groups,
  odd shapes, NaN / 0 / inf in ``out``, non-contiguous ``gy`` / ``out``; against the pre-pass form (the
  same kernel without an activation, ACT_NONE, on ``gy * act'(out)`` computed by
  ``activation_derivative_times``): BITWISE on the emulator for float32 / float64 (the same products in the
  same order; the emulator compiles with -ffp-contract=off) and for float16 relu (a select: no rounding);
  within the shared tolerance otherwise (float16 leaky_relu / sigmoid / tanh: the pre-pass rounds gy' to
  float16 once, the fused gather keeps it in float32; on a GPU NVRTC may contract ``1 - o*o`` into an FMA);
  and against the float64 textbook reference (tests/reference.py).
* Public level (emulated): ``conv2d_backward(..., output_mask=(True, True, True))`` with the pre-pass
  monkeypatched to raise: stride 1 and 2, dilation, groups, asymmetric and 'same' padding, flip; one data
  launch in the record; against the reference and PyTorch autograd (float64), bitwise equal across thread
  orders; the same call with the fused path refused (the pre-pass, then the ACT_NONE kernel) gives bitwise
  the same data gradient (float32 / float64, float16 relu). The NumPy path fuses it too (tests/test_numpy_grad_activation.py); a
  declined geometry runs the pre-pass and the record says so.
"""

from __future__ import annotations

import numpy as np
import pytest

import gpuconv
from gpuconv import _conv_lowering as L
from gpuconv import _grad_conv as G
from gpuconv._backend import CudaBackend, use_backend
from gpuconv._cuda import conv_backward_data as BD
from gpuconv._cuda.gemm import WIDE_TILE
from gpuconv._geometry import ACTIVATIONS, conv_geometry
from tests.reference import conv_nd_grads_ref, explicit_padding, pair
from tests.runners import emulated_runtime, numpy_io, runtime_fixture, torch, with_thread_order
from tests.support import ACTIVATION_DERIVATIVES, activated_output, fused_derivative_is_bitwise, noncontiguous_view
from tests.tolerance import assert_close

rt = runtime_fixture()

DTYPES = (np.float16, np.float32, np.float64)
ACTS = ("relu", "leaky_relu", "sigmoid", "tanh")
DERIVATIVES = ACTIVATION_DERIVATIVES  # d act / d z from the activated value (tests/support.py)

# Launch level: the forward call (x shape, w shape, stride, padding, dilation, groups, flip). Sizes are not tile
# multiples; "two-tiles" has 2 pixel tiles and 2 channel tiles per phase.
LAUNCH_CASES = {
    "asym-pad-dil": ((2, 3, 9, 10), (5, 3, 3, 2), 1, ((2, 0), (1, 1)), (2, 1), 1, False),
    "groups-s2-flip": ((1, 4, 9, 11), (6, 2, 2, 3), 2, 1, 1, 2, True),
    "two-tiles-s3": ((2, 70, 25, 13), (3, 70, 2, 2), 3, ((1, 0), (0, 1)), 1, 1, False),
}

# Public level: x shape, w shape, stride, padding, dilation, groups, flip.
PUBLIC_CASES = {
    "stride2-asym-dil-groups-flip": ((2, 4, 11, 10), (6, 2, 3, 2), 2, ((1, 0), (2, 1)), (2, 1), 2, True),
    "stride1-same-flip": ((2, 3, 8, 7), (5, 3, 4, 3), 1, "same", (1, 2), 1, True),
    "stride-2x3-odd": ((1, 5, 13, 11), (4, 5, 3, 3), (2, 3), 1, 1, 1, False),
    "dw-stride2": ((1, 3, 9, 9), (6, 1, 3, 3), 2, 1, 1, 3, False),
}


def _explicit(cases, case):
    xs, ws, stride, padding, dilation, _, flip = cases[case]
    stride, dilation = pair(stride), pair(dilation)
    pt, pb, pl, pr = explicit_padding(padding, ws[2:], stride, dilation, xs[2:], flip)
    return stride, ((pt, pb), (pl, pr)), dilation


def _launch_data(case, dtype, act, seed=0, layout="contiguous"):
    xs, ws, stride, padding, dilation, groups, flip = LAUNCH_CASES[case]
    g = conv_geometry(xs, ws, None, stride, padding, dilation, groups, flip, act)
    rng = np.random.default_rng(seed)
    gy = (4 * rng.standard_normal(g.output_shape)).astype(dtype)
    w = (rng.standard_normal(ws) / 3).astype(dtype)
    out = activated_output(g.output_shape, act, dtype, rng, layout)
    return g, noncontiguous_view(gy, layout, rng), out, w


def _prepass(gy, out, act):
    return G.activation_derivative_times(np, np.asarray(gy), np.asarray(out), act)


def _reference(g, gy, out, w, act, case):
    """(gx, magnitude) in float64: the data gradient of gy * act'(out)."""
    xs, _, _, _, _, groups, flip = LAUNCH_CASES[case]
    stride, pad, dilation = _explicit(LAUNCH_CASES, case)
    gz = gy.astype(np.float64) * DERIVATIVES[act](out.astype(np.float64))
    x0 = np.zeros(xs)
    gx, _ = conv_nd_grads_ref(x0, w.astype(np.float64), gz, stride, pad, dilation, groups, flip)
    mag, _ = conv_nd_grads_ref(x0, np.abs(w.astype(np.float64)), np.abs(gz), stride, pad, dilation, groups, flip)
    return gx, mag


def _launch(rt, g, gy, out, w, tile=None):
    return numpy_io(rt, lambda rt, gy, out, w: BD.launch(rt, gy, w, out, g, g.H, g.W, tile=tile), gy, out, w)


def _unfused(rt, g, gz, w, tile=None):
    plain = conv_geometry(g.input_shape, g.weight_shape, None, (g.sh, g.sw), ((g.pt, g.pb), (g.pl, g.pr)),
                          (g.dh, g.dw), g.groups, g.flip)
    return numpy_io(rt, lambda rt, gz, w: BD.launch(rt, gz, w, None, plain, g.H, g.W, tile=tile), gz, w)


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", list(LAUNCH_CASES))
def test_launch_against_prepass_and_reference(rt, case, dtype, act):
    g, gy, out, w = _launch_data(case, dtype, act, seed=1, layout="transposed")
    assert not gy.flags.c_contiguous and not out.flags.c_contiguous
    (y, ids), (y2, ids2) = (_launch(with_thread_order(rt, o), g, gy, out, w) for o in ("forward", "reversed"))
    tile = BD.data_tile(g, dtype, g.H, g.W)
    name = BD.kernel_name(dtype, tile, ACTIVATIONS[act])
    assert len(ids) == 1 and ids == ids2 and ids[0].startswith(name + " phases=") and y.dtype == dtype
    assert y.tobytes() == y2.tobytes(), "thread orders differ"
    exp, mag = _reference(g, gy, out, w, act, case)
    assert_close(y, exp, mag, dtype, what=f"{case} {act} vs reference")
    yp, kp = _unfused(rt, g, _prepass(gy, out, act), w, tile)
    assert kp[0].startswith(BD.kernel_name(dtype, tile, 0) + " phases=")
    if fused_derivative_is_bitwise(rt, dtype, act):
        np.testing.assert_array_equal(y.view(np.uint8), yp.view(np.uint8), err_msg=f"{case} {act}: not bitwise")
    else:
        assert_close(y, yp.astype(np.float64), mag, dtype, what=f"{case} {act} vs pre-pass")


@pytest.mark.parametrize("dtype", (np.float16, np.float32), ids=lambda d: np.dtype(d).name)
def test_wide_tile_and_infinities(rt, dtype):
    """The wide tile (forced; the rule picks it for bigger calls) and infinite gy: where relu's derivative
    is 0 an infinite gy gives 0 (a select, as PyTorch), where it is 1 the infinity goes through."""
    g, gy, out, w = _launch_data("two-tiles-s3", dtype, "relu", seed=2)
    gy.flat[5::13] = np.inf
    y, ids = _launch(rt, g, gy, out, w, tile=WIDE_TILE)
    assert ids[0].startswith(BD.kernel_name(dtype, WIDE_TILE, ACTIVATIONS["relu"]))
    yp, _ = _unfused(rt, g, _prepass(gy, out, "relu"), w, WIDE_TILE)
    np.testing.assert_array_equal(y.view(np.uint8), yp.view(np.uint8))


def test_launch_argument_checks():
    g = conv_geometry((1, 3, 9, 9), (4, 3, 3, 3), None, 1, 1, activation="relu")
    rt0 = emulated_runtime()
    gy, w = np.zeros((1, 4, 9, 9), np.float32), np.zeros((4, 3, 3, 3), np.float32)
    with pytest.raises(ValueError, match="must match gy"):
        BD.launch(rt0, gy, w, gy[:, :, 1:], g, 9, 9)
    plain = conv_geometry((1, 3, 9, 9), (4, 3, 3, 3), None, 1, 1)
    with pytest.raises(ValueError, match="needs an activation"):
        BD.launch(rt0, gy, w, gy, plain, 9, 9)
    with pytest.raises(ValueError, match="only taken by the CUDA path"):
        L.backward_data(gpuconv._backend.NumpyBackend(), gy, w, g, 9, 9, out=gy)


# --------------------------------------------------------------------------------------------
# through conv2d_backward (emulated)
# --------------------------------------------------------------------------------------------

def _public_data(case, dtype, act, seed, layout="contiguous"):
    xs, ws, stride, padding, dilation, groups, flip = PUBLIC_CASES[case]
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal(xs).astype(dtype), (rng.standard_normal(ws) / 3).astype(dtype)
    out = gpuconv.conv2d(x, w, None, stride, padding, dilation, groups, flip=flip, activation=act)
    out = noncontiguous_view(out.astype(dtype), layout, rng)
    if act in ("relu", "leaky_relu"):  # (sigmoid / tanh at 0 and NaN: the launch-level tests)
        out.flat[::7] = 0
        out.flat[3::11] = np.nan
    gy = rng.standard_normal(out.shape).astype(dtype)
    return x, w, noncontiguous_view(gy, layout, rng), out


def _backward(runtime, case, x, w, gy, out, act, mask=(True, True, True)):
    _, _, stride, padding, dilation, groups, flip = PUBLIC_CASES[case]
    with use_backend(CudaBackend(runtime)):
        res = G.conv2d_backward(gy, x, w, stride, padding, dilation, groups, flip=flip, activation=act,
                                output=out, output_mask=mask)
        return res, gpuconv.last_kernel().kernels


def _no_prepass(*a, **k):
    raise AssertionError("pre-pass called")


@pytest.mark.emulated
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("case", list(PUBLIC_CASES))
def test_conv2d_backward_runs_no_prepass(monkeypatch, case, act):
    x, w, gy, out = _public_data(case, np.float64, act, seed=3, layout="sliced" if case[-1] == "d" else "contiguous")
    monkeypatch.setattr(G, "activation_derivative_times", _no_prepass)
    (gx, gw, gb), kernels = _backward(emulated_runtime(), case, x, w, gy, out, act)
    (gx2, _, _), _ = _backward(emulated_runtime(reverse_threads=True), case, x, w, gy, out, act, (True, False, False))
    assert gx.tobytes() == gx2.tobytes()
    stride, pad, dilation = _explicit(PUBLIC_CASES, case)
    phases = min(stride[0], x.shape[2]) * min(stride[1], x.shape[3])
    dname = "gpuconv::conv2d_backward_data<double, 64, 64, 8, 4, 4, %d>" % ACTIVATIONS[act]
    assert kernels[0] == f"{dname} phases={phases}" and not any("backward_data" in k for k in kernels[1:])
    groups, flip = PUBLIC_CASES[case][5], PUBLIC_CASES[case][6]
    gz = gy * DERIVATIVES[act](out)
    ex, ew = conv_nd_grads_ref(x, w, gz, stride, pad, dilation, groups, flip)
    np.testing.assert_allclose(gx, ex, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(gw, ew, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(gb, gz.sum(axis=(0, 2, 3)), rtol=1e-10, atol=1e-10)
    if torch is not None:
        F = torch.nn.functional
        pt, pb, pl, pr = pad[0] + pad[1]
        xt, wt = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
        z = F.conv2d(F.pad(xt, (pl, pr, pt, pb)), wt.flip(2, 3) if flip else wt, None, stride, 0, dilation, groups)
        if act in ("relu", "leaky_relu"):  # the planted 0 / NaN of out decide the derivative: mask from out
            y = torch.where(torch.tensor(np.array(out)) > 0, z, (0.0 if act == "relu" else 0.01) * z)
        else:
            y = (torch.sigmoid if act == "sigmoid" else torch.tanh)(z)
        y.backward(torch.tensor(np.array(gy)))
        np.testing.assert_allclose(gx, xt.grad.numpy(), rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(gw, wt.grad.numpy(), rtol=1e-10, atol=1e-10)


@pytest.mark.emulated
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("act", ACTS)
def test_conv2d_backward_bitwise_as_prepass_on_the_same_kernel(monkeypatch, dtype, act):
    """The fused data gradient against the pre-pass followed by the same kernel without an activation (the
    fused path refused): bitwise for float32 / float64 and float16 relu."""
    case = "stride2-asym-dil-groups-flip"
    x, w, gy, out = _public_data(case, dtype, act, seed=4, layout="transposed")
    (gx, _, _), _ = _backward(emulated_runtime(), case, x, w, gy, out, act, (True, False, False))
    monkeypatch.setattr(G, "fused_data_reason", lambda *a: "forced")
    (gxp, _, _), kernels = _backward(emulated_runtime(), case, x, w, gy, out, act, (True, False, False))
    assert kernels[0] == "activation derivative pre-pass for the data gradient (forced)"
    assert len(kernels) == 2 and kernels[1].startswith("gpuconv::conv2d_backward_data<") and ", 0> phases=" in kernels[1]
    if np.dtype(dtype) != np.float16 or act == "relu":
        assert gx.tobytes() == gxp.tobytes()
    else:
        stride, pad, dilation = _explicit(PUBLIC_CASES, case)
        gz = gy.astype(np.float64) * DERIVATIVES[act](out.astype(np.float64))
        _, _, _, _, _, groups, flip = PUBLIC_CASES[case]
        ex, _ = conv_nd_grads_ref(x, w, gz, stride, pad, dilation, groups, flip)
        mag, _ = conv_nd_grads_ref(np.abs(x.astype(np.float64)), np.abs(w.astype(np.float64)), np.abs(gz), stride,
                                   pad, dilation, groups, flip)
        assert_close(gx, ex, mag, dtype, what=f"fused {act}")
        assert_close(gxp, ex, mag, dtype, what=f"pre-pass {act}")


@pytest.mark.emulated
def test_declined_geometry_runs_the_prepass_and_says_why(monkeypatch):
    case = "stride-2x3-odd"
    x, w, gy, out = _public_data(case, np.float64, "relu", seed=6)
    (gx, _, _), _ = _backward(emulated_runtime(), case, x, w, gy, out, "relu", (True, False, False))
    monkeypatch.setattr(BD, "decline_reason", lambda geom, dtype: "the backward-data kernel declines (forced)")
    (gxd, _, _), kernels = _backward(emulated_runtime(), case, x, w, gy, out, "relu", (True, False, False))
    assert kernels[:2] == ("activation derivative pre-pass for the data gradient (the backward-data kernel "
                           "declines (forced))", "conv2d backward-data phase lowering (the backward-data kernel "
                           "declines (forced))")
    assert not any("conv2d_backward_data<" in k for k in kernels)
    np.testing.assert_allclose(gxd, gx, rtol=1e-12, atol=1e-12)


def test_numpy_path_fuses_it_too(monkeypatch):
    """The NumPy path applies the derivative in numpy_col2im's chunk copies (no pre-pass either; its own
    suite: tests/test_numpy_grad_activation.py)."""
    case = "stride1-same-flip"
    x, w, gy, out = _public_data(case, np.float32, "tanh", seed=5)
    monkeypatch.setattr(G, "activation_derivative_times", _no_prepass)
    _, _, stride, padding, dilation, groups, flip = PUBLIC_CASES[case]
    G.conv2d_backward(gy, x, w, stride, padding, dilation, groups, flip=flip, activation="tanh", output=out,
                      output_mask=(True, False, False))
    assert gpuconv.last_kernel().kernels == ("numpy_col2im",)
