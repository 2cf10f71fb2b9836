"""The 1-D and 3-D CUDA data gradients as ONE launch (issue 18): ``conv1d_backward_data`` /
``conv3d_backward_data<T, tile, ACT>``, the N-D instantiations of ``kernels/conv2d_backward_data.cu``'s body
(the gather geometry ``Im2colGeometry1d`` / ``Im2colGeometry3d`` a template parameter; host
``gpuconv/_cuda/conv_backward_data.py``), run by ``_conv_nd.backward_data`` on CUDA arrays.

* Launch level (``rt`` fixture: the emulator, both thread orders compared byte for byte, and a GPU where
  there is one): against the definition (``tests/reference.py`` ``conv_nd_grads_ref``, the shared tolerance
  model) and PyTorch (``torch.nn.grad.conv1d_input`` / ``conv3d_input``, float64): strides 1..4 per axis with
  stride > kernel (tapless phases), stride with dilation sharing a factor (gcd cases), asymmetric and 'same'
  padding, groups, depthwise, flip, odd sizes with two pixel tiles and two channel tiles, float16 / 32 / 64,
  non-contiguous ``gy``; ``gx`` allocated full of NaN (every element must be written); both tiles forced;
  the fused activation derivative (every activation, ``out`` with 0 / NaN) against the pre-pass form
  (bitwise on the emulator where the products are the same) and the reference.
* Public level (emulated): ``gpuconv.grad.conv1d_input`` / ``conv3d_input`` and ``conv_transpose1d`` / ``3d``
  with ``output_padding >= stride``, N = 0 / 1 / 3, one launch in the record; more phases than one launch
  holds (two launches, each phase in one); ``_conv_nd.backward_data(..., out=...)`` for every activation
  against PyTorch autograd (CUDA: fused, one launch; NumPy: the pre-pass, named in the record); the decline
  path (the lowering, its reason first in the record, the pre-pass named with ``out``).
* Host rules: the parameter blocks' sizes (under 4 KB), the instantiations and the operation table, the
  3-D phase plan partitioning the input, the packed sub-filters, the 32-bit rule's messages.
"""

from __future__ import annotations

import numpy as np
import pytest

import gpuconv
from gpuconv import _conv_nd
from gpuconv._backend import CudaBackend, NumpyBackend, use_backend
from gpuconv._cuda import conv_backward_data as BD
from gpuconv._cuda import ops
from gpuconv._cuda.conv3d_igemm import SMALL_TILE_3D
from gpuconv._cuda.gemm import SMALL_TILE, WIDE_TILE
from gpuconv._geometry import ACTIVATIONS
from gpuconv._geometry_nd import conv_nd_geometry
from tests.reference import apply_activation, conv_nd_grads_ref, explicit_padding_nd
from tests.runners import emulated_runtime, numpy_io, runtime_fixture, torch, with_thread_order
from tests.support import PoisonedEmpty, fused_derivative_is_bitwise, noncontiguous_view
from tests.tolerance import assert_close

rt = runtime_fixture()

DTYPES = (np.float16, np.float32, np.float64)
ORDERS = ("forward", "reversed")
ACTS = ("relu", "leaky_relu", "sigmoid", "tanh")
DERIVATIVES = {  # d act / d z from the activated value (docs/gradients.md); NaN > 0 is False
    "relu": lambda o: np.where(o > 0, 1.0, 0.0),
    "leaky_relu": lambda o: np.where(o > 0, 1.0, 0.01),
    "sigmoid": lambda o: (1 - o) * o,
    "tanh": lambda o: 1 - o * o,
}

# nd, x shape, w shape, stride, padding, dilation, groups, flip. Sizes are no tile multiples; "two-tiles"
# cases have C = 70 (two channel tiles of 64) and more than 128 pixels per phase (two pixel tiles).
CASES = {
    "1d-s1-same-flip": (1, (2, 3, 11), (5, 3, 4), 1, "same", 2, 1, True),
    "1d-s3-gt-kernel-asym-groups": (1, (3, 4, 17), (6, 2, 2), 3, ((2, 1),), 1, 2, False),
    "1d-s4-dil6-gcd-flip": (1, (1, 2, 23), (3, 2, 3), 4, 1, 6, 1, True),
    "1d-depthwise-s2": (1, (2, 3, 13), (6, 1, 3), 2, 1, 1, 3, False),
    "1d-two-tiles-s2": (1, (3, 70, 91), (5, 70, 3), 2, 1, 1, 1, False),
    "3d-s1-same-flip": (3, (2, 3, 5, 6, 7), (4, 3, 2, 3, 2), 1, "same", (1, 2, 1), 1, True),
    "3d-s324-asym-groups": (3, (1, 4, 7, 9, 8), (6, 2, 2, 3, 2), (3, 2, 4), ((1, 0), (0, 2), (1, 1)), 1, 2,
                            False),
    "3d-s232-dil4-gcd-flip": (3, (2, 2, 8, 7, 9), (3, 2, 2, 2, 3), (2, 3, 2), (0, 1, 2), (4, 2, 1), 1, True),
    "3d-depthwise-s2": (3, (2, 4, 5, 6, 5), (8, 1, 3, 2, 3), (2, 1, 2), 1, 1, 4, False),
    "3d-two-tiles-s121": (3, (1, 70, 4, 9, 7), (3, 70, 2, 2, 2), (1, 2, 1), 0, 1, 1, False),
}
ACT_CASES = ("1d-s3-gt-kernel-asym-groups", "3d-s232-dil4-gcd-flip")


def _t(v, nd):
    return (v,) * nd if isinstance(v, int) else tuple(v)


def _geometry(case, act=None, n=None):
    nd, xs, ws, stride, padding, dilation, groups, flip = CASES[case]
    if n is not None:
        xs = (n,) + xs[1:]
    return conv_nd_geometry(nd, xs, ws, None, stride, padding, dilation, groups, flip, act)


def _explicit(case):
    nd, xs, ws, stride, padding, dilation, _, flip = CASES[case]
    s, d = _t(stride, nd), _t(dilation, nd)
    return s, explicit_padding_nd(padding, ws[2:], s, d, xs[2:], flip), d


def _data(case, dtype, seed, layout="transposed", act=None, n=None):
    """(geometry, gy (in ``layout``), w, out (the activated forward output with 0 and NaN, or None))."""
    g = _geometry(case, act, n)
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal(g.weight_shape) / 3).astype(dtype)
    gy = (2 * rng.standard_normal(g.output_shape)).astype(dtype)
    out = None
    if act is not None:
        out = noncontiguous_view(apply_activation(rng.standard_normal(g.output_shape), act).astype(dtype), layout,
                                 rng)
        out.flat[::7] = 0  # (through the view: its special values)
        out.flat[3::11] = np.nan
    return g, (gy if gy.size == 0 else noncontiguous_view(gy, layout, rng)), w, out


def _reference(case, gy, w, out=None, act=None):
    """(gx, magnitude) in float64 from the definition (gy times the derivative first)."""
    nd, xs, _, _, _, _, groups, flip = CASES[case]
    gz = gy.astype(np.float64)
    if act is not None:
        gz = gz * DERIVATIVES[act](out.astype(np.float64))
    stride, pad, dilation = _explicit(case)
    x0 = np.zeros((gy.shape[0],) + xs[1:])
    gx, _ = conv_nd_grads_ref(x0, w, gz, stride, pad, dilation, groups, flip)
    mag, _ = conv_nd_grads_ref(x0, np.abs(w.astype(np.float64)), np.abs(gz), stride, pad, dilation, groups, flip)
    return gx, mag


def _torch_input_grad(case, gy, w):
    """torch.nn.grad.conv{1,3}d_input on the explicitly padded input, cropped (asymmetric padding, flip)."""
    nd, xs, _, _, _, _, groups, flip = CASES[case]
    stride, pad, dilation = _explicit(case)
    wt = torch.tensor(np.array(w, dtype=np.float64))
    wt = wt.flip(*range(2, 2 + nd)) if flip else wt
    padded = (gy.shape[0], xs[1]) + tuple(n + lo + hi for n, (lo, hi) in zip(xs[2:], pad))
    fn = torch.nn.grad.conv1d_input if nd == 1 else torch.nn.grad.conv3d_input
    g = fn(padded, wt, torch.tensor(np.array(gy, dtype=np.float64)), stride, 0, dilation, groups)
    return g[(slice(None), slice(None)) + tuple(slice(lo, lo + n) for (lo, _), n in zip(pad, xs[2:]))].numpy()


def _launch(rt, g, gy, w, out=None, tile=None):
    return numpy_io(rt, lambda rt, gy, w, out: BD.launch(rt, gy, w, out, g, *g.input_size, tile=tile), gy, w, out)


def _name(g, dtype, act=0, tile=None):
    return BD.kernel_name(dtype, tile or BD.data_tile(g, dtype, *g.input_size), act, g.nd)


def _phases(g, gy_shape=None):
    return len(BD.plan(g, *g.input_size, *(gy_shape or g.output_shape)[2:]))


# --------------------------------------------------------------------------------------------
# launch level
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", list(CASES))
def test_one_launch_against_reference(rt, case, dtype):
    g, gy, w, _ = _data(case, dtype, seed=1)
    assert not gy.flags.c_contiguous
    (gx, ids), (gx2, ids2) = (_launch(with_thread_order(rt, o), g, gy, w) for o in ORDERS)
    assert ids == ids2 == [f"{_name(g, dtype)} phases={_phases(g)}"]
    assert gx.dtype == dtype and gx.shape == g.input_shape and gx.flags.c_contiguous
    assert gx.tobytes() == gx2.tobytes(), "thread orders differ"
    exp, mag = _reference(case, gy, w)
    assert_close(gx, exp, mag, dtype, what=f"{case} vs reference")
    if torch is not None and np.dtype(dtype) == np.float64:
        np.testing.assert_allclose(gx, _torch_input_grad(case, gy, w), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("tile", ("wide", "small"))
@pytest.mark.parametrize("case", ("1d-two-tiles-s2", "1d-s4-dil6-gcd-flip", "3d-two-tiles-s121",
                                  "3d-s232-dil4-gcd-flip"))
def test_both_tiles_and_poisoned_output(rt, case, tile):
    """Each instantiated float32 tile, forced (3-D: only its small tile, 64x64x8, exists: the wide one is
    refused); ``gx`` allocated full of NaN: every element (the tapless phases' zeros included) must be
    written by the kernel."""
    g, gy, w, _ = _data(case, np.float32, seed=2, layout="sliced")
    t = WIDE_TILE if tile == "wide" else SMALL_TILE
    if g.nd == 3 and tile == "wide":
        with pytest.raises(ValueError, match="tile wide is not instantiated"):
            BD.launch(rt, np.asarray(gy), w, None, g, *g.input_size, tile=t)
        return

    def run(rt, gy, w):
        return BD.launch(PoisonedEmpty(rt), gy, w, None, g, *g.input_size, tile=t)
    gx, ids = numpy_io(rt, run, gy, w)
    expected_tile = SMALL_TILE_3D if g.nd == 3 and tile == "small" else t
    assert ids == [f"{_name(g, np.float32, tile=expected_tile)} phases={_phases(g)}"]
    assert not np.isnan(gx).any()
    exp, mag = _reference(case, gy, w)
    assert_close(gx, exp, mag, np.float32, what=f"{case} {tile}")


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", ACT_CASES)
def test_fused_activation_against_prepass_and_reference(rt, case, dtype, act):
    g, gy, w, out = _data(case, dtype, seed=3, act=act)
    assert not out.flags.c_contiguous
    (gx, ids), (gx2, _) = (_launch(with_thread_order(rt, o), g, gy, w, out) for o in ORDERS)
    assert ids == [f"{_name(g, dtype, ACTIVATIONS[act])} phases={_phases(g)}"]
    assert gx.tobytes() == gx2.tobytes(), "thread orders differ"
    exp, mag = _reference(case, gy, w, out, act)
    assert_close(gx, exp, mag, dtype, what=f"{case} {act} vs reference")
    plain = _geometry(case)
    gz, _ = _conv_nd._derivative_prepass(NumpyBackend(), np.asarray(gy), np.asarray(out), g, "data", "test")
    gp, kp = numpy_io(rt, lambda rt, gz, w: BD.launch(rt, gz, w, None, plain, *g.input_size), gz, w)
    assert kp == [f"{_name(g, dtype)} phases={_phases(g)}"]
    if fused_derivative_is_bitwise(rt, dtype, act):
        np.testing.assert_array_equal(gx.view(np.uint8), gp.view(np.uint8), err_msg=f"{case} {act}: not bitwise")
    else:
        assert_close(gx, gp.astype(np.float64), mag, dtype, what=f"{case} {act} vs pre-pass")


# --------------------------------------------------------------------------------------------
# public level (emulated)
# --------------------------------------------------------------------------------------------

def _on_emulator(fn, *args, reverse=False, **kwargs):
    with use_backend(CudaBackend(emulated_runtime(reverse_threads=reverse))):
        return fn(*args, **kwargs), gpuconv.last_kernel().kernels


def _kwargs(case):
    _, _, _, stride, padding, dilation, groups, flip = CASES[case]
    return dict(stride=stride, padding=padding, dilation=dilation, groups=groups, flip=flip)


@pytest.mark.emulated
@pytest.mark.parametrize("n", (0, 1, 3))
@pytest.mark.parametrize("case", ("1d-s3-gt-kernel-asym-groups", "3d-s324-asym-groups"))
def test_public_input_gradient_batches_and_record(case, n):
    g, gy, w, _ = _data(case, np.float64, seed=4, n=n)
    fn = gpuconv.grad.conv1d_input if g.nd == 1 else gpuconv.grad.conv3d_input
    gx, kernels = _on_emulator(fn, g.input_shape, w, gy, **_kwargs(case))
    assert gx.shape == g.input_shape
    if n == 0:
        assert kernels == ("none (empty output)",) and not gx.any()
        return
    assert kernels == (f"{_name(g, np.float64)} phases={_phases(g)}",)
    exp, _ = _reference(case, gy, w)
    np.testing.assert_allclose(gx, exp, rtol=1e-12, atol=1e-12)
    gx2, _ = _on_emulator(fn, g.input_shape, w, gy, reverse=True, **_kwargs(case))
    assert gx.tobytes() == gx2.tobytes()
    if n == 1:  # unbatched
        gx1, _ = _on_emulator(fn, g.input_shape[1:], w, gy[0], **_kwargs(case))
        assert gx1.tobytes() == gx[0].tobytes()


@pytest.mark.emulated
@pytest.mark.parametrize("dtype", (np.float16, np.float64), ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("nd", (1, 3))
def test_conv_transpose_output_padding_past_the_stride(nd, dtype):
    """output_padding >= stride (allowed by a larger dilation): gy is shorter than the forward output of the
    result's size; one launch, against PyTorch (float64) and the float64 result (float16)."""
    rng = np.random.default_rng(7)
    if nd == 1:
        x, w = rng.standard_normal((2, 4, 7)), rng.standard_normal((4, 3, 3)) / 2
        kw = dict(stride=2, padding=1, output_padding=2, dilation=3)
    else:
        x, w = rng.standard_normal((2, 4, 3, 4, 2)), rng.standard_normal((4, 3, 2, 2, 3)) / 2
        kw = dict(stride=(1, 2, 1), padding=(0, 1, 1), output_padding=(1, 2, 0), dilation=(2, 3, 1))
    b = rng.standard_normal(3)
    fn = gpuconv.conv_transpose1d if nd == 1 else gpuconv.conv_transpose3d
    y, ks = _on_emulator(fn, x.astype(dtype), w.astype(dtype), b.astype(dtype), **kw)
    assert len(ks) == 1 and ks[0].startswith(f"gpuconv::conv{nd}d_backward_data<{BD.CTYPE[np.dtype(dtype)]}")
    y64 = fn(x, w, b, **kw)
    mag = fn(np.abs(x), np.abs(w), np.abs(b), **kw)
    assert_close(y, y64, mag, dtype, what=f"conv_transpose{nd}d")
    if torch is not None:
        tf = torch.nn.functional.conv_transpose1d if nd == 1 else torch.nn.functional.conv_transpose3d
        t = tf(torch.tensor(x), torch.tensor(w), torch.tensor(b), **kw).numpy()
        assert_close(y, t, mag, dtype, what=f"conv_transpose{nd}d vs PyTorch")


@pytest.mark.emulated
@pytest.mark.parametrize("nd", (1, 3))
def test_more_phases_than_one_launch_holds(nd):
    """70 / 80 phases: two launches of at most 64 phases, each phase in exactly one (the result is right
    everywhere, so every phase ran once)."""
    rng = np.random.default_rng(8)
    if nd == 1:
        xs, ws, stride = (2, 2, 150), (3, 2, 2), 70
    else:
        xs, ws, stride = (1, 2, 6, 9, 8), (2, 2, 2, 2, 3), (5, 4, 4)
    w = rng.standard_normal(ws)
    g = conv_nd_geometry(nd, xs, ws, None, stride, 1)
    gy = rng.standard_normal(g.output_shape)
    fn = gpuconv.grad.conv1d_input if nd == 1 else gpuconv.grad.conv3d_input
    gx, kernels = _on_emulator(fn, xs, w, gy, stride, 1)
    phases = _phases(g)
    assert phases == (70 if nd == 1 else 80)
    name = _name(g, np.float64)
    assert kernels == (f"{name} phases=64", f"{name} phases={phases - 64}")
    exp, _ = conv_nd_grads_ref(np.zeros(xs), w, gy, g.stride, g.padding, g.dilation, 1, False)
    np.testing.assert_allclose(gx, exp, rtol=1e-12, atol=1e-12)


def _torch_activation_grad(case, x, w, gy, act):
    """The gradient with respect to x of act(conv(x, w)) by PyTorch autograd (float64), and act(conv(x, w))."""
    nd, xs, _, _, _, _, groups, flip = CASES[case]
    F = torch.nn.functional
    stride, pad, dilation = _explicit(case)
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(w).flip(*range(2, 2 + nd)) if flip else torch.tensor(w)
    pads = tuple(p for lo_hi in reversed(pad) for p in lo_hi)
    conv = F.conv1d if nd == 1 else F.conv3d
    z = conv(F.pad(xt, pads), wt, None, stride, 0, dilation, groups)
    y = {"relu": torch.relu, "leaky_relu": lambda v: F.leaky_relu(v, 0.01), "sigmoid": torch.sigmoid,
         "tanh": torch.tanh}[act](z)
    y.backward(torch.tensor(gy))
    return xt.grad.numpy(), y.detach().numpy()


@pytest.mark.emulated
@pytest.mark.skipif(torch is None, reason="PyTorch is not installed")
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("case", ACT_CASES)
def test_backward_data_with_out_against_autograd(case, act):
    """``_conv_nd.backward_data(..., out=)``: the gradient with respect to the pre-activation, fused on CUDA
    (one launch, ACT in its name), a pre-pass on NumPy arrays (named in the record); both against PyTorch
    autograd of act(conv(x, w)) and bitwise equal across thread orders."""
    g = _geometry(case, act)
    rng = np.random.default_rng(9)
    x, w = rng.standard_normal(g.input_shape), rng.standard_normal(g.weight_shape) / 2
    gy = rng.standard_normal(g.output_shape)
    exp, out = _torch_activation_grad(case, x, w, gy, act)
    results = []
    for reverse in (False, True):
        be = CudaBackend(emulated_runtime(reverse_threads=reverse))
        gx, ks = _conv_nd.backward_data(be, gy, w, g, g.input_size, out=out)
        assert ks == [f"{_name(g, np.float64, ACTIVATIONS[act])} phases={_phases(g)}"]
        np.testing.assert_allclose(gx, exp, rtol=1e-10, atol=1e-10)
        results.append(gx.tobytes())
    assert results[0] == results[1]
    gxn, ksn = _conv_nd.backward_data(NumpyBackend(), gy, w, g, g.input_size, out=out)
    # NumPy: 1-D the height-1 lowering after a pre-pass; 3-D the N-D col2im with the derivative in its chunk copies
    assert ksn[0].startswith("activation derivative pre-pass for the data gradient (NumPy path" if g.nd == 1
                             else "numpy_col2im3d"), ksn
    np.testing.assert_allclose(gxn, exp, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="only meaningful with an activation"):
        _conv_nd.backward_data(NumpyBackend(), gy, w, _geometry(case), g.input_size, out=out)


@pytest.mark.emulated
@pytest.mark.parametrize("case", ("1d-s4-dil6-gcd-flip", "3d-s232-dil4-gcd-flip"))
def test_declined_geometry_runs_the_lowering_and_says_why(monkeypatch, case):
    """Where the kernel declines (its 32-bit rule; forced here), the lowering runs (1-D: the height-1 view,
    3-D: the depth-tap lowering), its reason first in the record; with ``out`` the pre-pass is named."""
    why = "the backward-data kernel declines (forced)"
    real = BD.decline_reason
    monkeypatch.setattr(BD, "decline_reason", lambda geom, dtype: why if BD.ndim(geom) != 2 else real(geom, dtype))
    g, gy, w, _ = _data(case, np.float64, seed=10, layout="contiguous")
    exp, _ = _reference(case, gy, w)
    gx, kernels = _on_emulator(gpuconv.grad.conv1d_input if g.nd == 1 else gpuconv.grad.conv3d_input, g.input_shape,
                               w, gy, **_kwargs(case))
    what = "conv1d height-1 lowering" if g.nd == 1 else "conv3d depth-tap lowering"
    assert kernels[0] == f"{what} ({why})" and len(kernels) > 1
    assert not any(f"conv{g.nd}d_backward_data<" in k for k in kernels)
    np.testing.assert_allclose(gx, exp, rtol=1e-10, atol=1e-10)
    ga = _geometry(case, "tanh")
    out = np.tanh(np.random.default_rng(11).standard_normal(g.output_shape))
    gxa, ka = _conv_nd.backward_data(CudaBackend(emulated_runtime()), gy, w, ga, g.input_size, out=out)
    assert ka[:2] == [f"{what} ({why})", "activation derivative pre-pass for the data gradient (the lowering runs it)"]
    expa, _ = _reference(case, gy, w, out, "tanh")
    np.testing.assert_allclose(gxa, expa, rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------------------------------------
# host rules
# --------------------------------------------------------------------------------------------

def test_parameter_blocks_instantiations_and_table():
    assert {nd: BD.PARAMS_DTYPES[nd].itemsize for nd in (1, 2, 3)} == {1: 1620, 2: 2648, 3: 3700}
    assert all(BD.PARAMS_DTYPES[nd].itemsize + 4 * 8 <= 4096 for nd in (1, 2, 3))  # + the four pointers
    assert BD.PHASE_DTYPES[1].names == ("b", "taps_c", "pad_c", "Q", "w_off", "vec_w")  # no row field
    assert BD.PHASE_DTYPES[3].names == ("a_d", "a", "b", "taps_d", "taps_r", "taps_c", "pad_d", "pad_r", "pad_c",
                                        "PD", "P", "Q", "w_off", "vec_w")
    assert BD.PARAMS_DTYPES[3].fields["ph"][1] == 4 * 29 and BD.PARAMS_DTYPES[1].fields["ph"][1] == 4 * 21
    for nd, count in ((1, 25), (3, 15)):  # 3-D: the small tile only (5 activations x 3 dtypes)
        names = BD.INSTANTIATIONS_ND[nd]
        assert len(names) == count and all(n.startswith(f"gpuconv::conv{nd}d_backward_data<") for n in names)
        assert set(names) <= set(ops.INSTANTIATIONS[BD.SOURCE])
        assert ops.operation(f"conv{nd}d", "backward_data").names == ("igemm",)
    assert "gpuconv::conv3d_backward_data<float, 64, 64, 8, 8, 8, 2>" in BD.INSTANTIATIONS_ND[3]
    assert len(ops.INSTANTIATIONS[BD.SOURCE]) == 65
    assert not any("conv3d_backward_data<float, 64, 128" in n for n in BD.INSTANTIATIONS_ND[3])


@pytest.mark.parametrize("case", [c for c in CASES if c.startswith("3d")])
def test_3d_plan_partitions_the_input_and_packs_at_most_w(case):
    g = _geometry(case)
    phases = BD.plan(g, *g.input_size, *g.output_size)
    covered = np.zeros(g.input_size, dtype=int)
    for (a0, a1, a2, *_, n0, n1, n2) in phases:
        view = covered[a0::g.stride[0], a1::g.stride[1], a2::g.stride[2]]
        assert view.shape == (n0, n1, n2)
        view += 1
    assert (covered == 1).all() and len(phases) == int(np.prod([min(s, n) for s, n in zip(g.stride, g.input_size)]))
    w = np.arange(np.prod(g.weight_shape), dtype=np.float64).reshape(g.weight_shape)
    wp, offsets = BD.pack_weights(np, w, g, phases)
    assert wp.size <= w.size and len(set(wp.tolist())) == wp.size
    we = w[:, :, ::-1, ::-1, ::-1] if g.flip else w
    for phase, off in zip(phases, offsets):
        taps = phase[3:6]
        if all(taps):
            block = wp[off:off + g.C * g.Kg * int(np.prod([len(t) for t in taps]))]
            block = block.reshape((g.C, g.Kg) + tuple(len(t) for t in taps))
            for c in range(g.C):
                gr, cc = divmod(c, g.Cg)
                exp = we[gr * g.Kg:(gr + 1) * g.Kg, cc][:, taps[0]][:, :, taps[1]][:, :, :, taps[2]]
                np.testing.assert_array_equal(block[c], exp)


def test_32_bit_rule():
    assert BD.decline_reason(_geometry("3d-s324-asym-groups"), np.float32) is None
    huge3 = conv_nd_geometry(3, (1, 1, 2000, 1000, 1100), (1, 1, 1, 1, 1), None)
    assert "D * H * W = 2200000000 exceeds 2^31-1" in BD.decline_reason(huge3, np.float32)
    huge1 = conv_nd_geometry(1, (1, 2, 10), (3, 2, 3), None, 1, 2**30, 2**29)
    reason = BD.decline_reason(huge1, np.float32)
    assert reason.startswith("the backward-data kernel declines this geometry") and "2^31-1" in reason
