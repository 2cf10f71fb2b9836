"""``gpuconv.conv1d_backward`` / ``gpuconv.conv3d_backward`` (the combined backward with an activation) and the
1-D filter-gradient kernels ``conv1d_backward_filter_igemm`` / ``conv1d_backward_filter_depthwise``
(kernels/conv2d_backward_filter.cu with ``Im2colGeometry1d``; issue 18).

Public functions on both backends: NumPy always; CUDA through the ``rt`` fixture (tests/runners.py: the CPU
emulator, marked ``emulated``, and a GPU, skipped without one) under both thread orders, bitwise equal.
Expected values: PyTorch autograd through ``F.conv1d`` / ``F.conv3d`` plus the activation (float64, from
the same rounded inputs) where torch is installed, and always the textbook gradients of tests/reference.py
(``conv_nd_grads_ref`` on ``grad_output`` times the derivative), under the shared tolerance model (magnitude:
the reference on absolute values). Odd shapes that are no tile multiples, strides (larger than the kernel
too), dilation, asymmetric and 'same' padding, groups and depthwise, flip, every activation, output_mask
combinations, float16 / 32 / 64, non-contiguous inputs, N = 0 and 1, unbatched inputs, the errors; the record.
The 1-D kernels directly: against the reference and ``torch.nn.grad.conv1d_weight``, every activation's
fused derivative, several split counts, bitwise repeatable in both thread orders.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

import gpuconv
from gpuconv._backend import CudaBackend, use_backend
from gpuconv._cuda import conv_backward_data as BD
from gpuconv._cuda import conv_backward_filter as B
from gpuconv._cuda import ops
from gpuconv._geometry import ACTIVATIONS
from gpuconv._geometry_nd import conv_nd_geometry
from tests.reference import apply_activation, conv_nd_grads_ref, conv_nd_ref, explicit_padding_nd
from tests.runners import numpy_io, runtime_fixture, torch, with_thread_order
from tests.support import noncontiguous_view
from tests.tolerance import assert_close

rt = runtime_fixture()

DTYPES = (np.float16, np.float32, np.float64)
ORDERS = ("forward", "reversed")
ACTS = (None, "relu", "leaky_relu", "sigmoid", "tanh")
DERIVATIVES = {  # d act / d z from the activated value (docs/gradients.md)
    None: lambda o: np.ones_like(o),
    "relu": lambda o: np.where(o > 0, 1.0, 0.0),
    "leaky_relu": lambda o: np.where(o > 0, 1.0, 0.01),
    "sigmoid": lambda o: (1 - o) * o,
    "tanh": lambda o: 1 - o * o,
}

# n, x shape, w shape, stride, padding, dilation, groups, flip. N*Q (N*OD*P*Q) never a multiple of BK,
# Cg*S and Kg never of 64; "1d-many" has two filter tiles and three column tiles.
CASES = {
    "1d-plain": (1, (2, 3, 13), (4, 3, 3), 1, 1, 1, 1, False),
    "1d-stride-gt-kernel-asym-groups-flip": (1, (3, 4, 23), (6, 2, 2), 3, ((2, 1),), 1, 2, True),
    "1d-dilated-same": (1, (2, 3, 17), (5, 3, 3), 1, "same", 2, 1, False),
    "1d-many": (1, (2, 20, 37), (70, 10, 15), 2, 3, 1, 2, False),
    "1d-depthwise-mult": (1, (2, 4, 29), (8, 1, 5), 2, 2, 1, 4, True),
    "1d-depthwise-long": (1, (3, 3, 700), (3, 1, 11), 1, "same", 2, 3, False),
    "3d-strided-groups-flip": (3, (2, 4, 5, 6, 7), (6, 2, 2, 3, 2), (2, 1, 2), (1, 0, 1), 1, 2, True),
    "3d-depthwise-same": (3, (1, 3, 4, 5, 6), (3, 1, 3, 3, 3), 1, "same", (1, 2, 1), 3, False),
}
CASES_1D = [c for c in CASES if c.startswith("1d")]


def _tuple(v, n):
    return (v,) * n if isinstance(v, int) else tuple(v)


def _geometry(case, act=None, n_batch=None):
    n, xs, ws, stride, padding, dilation, groups, flip = CASES[case]
    if n_batch is not None:
        xs = (n_batch,) + xs[1:]
    return conv_nd_geometry(n, xs, ws, None, stride, padding, dilation, groups, flip, act)


def _args(case):
    n, xs, ws, stride, padding, dilation, groups, flip = CASES[case]
    return dict(stride=stride, padding=padding, dilation=dilation, groups=groups, flip=flip)


def _data(case, dtype, act=None, seed=0, layout="contiguous", n_batch=None):
    """(geometry, x, w, gy, out): ``out`` the activated forward output (float64 reference forward, rounded to
    ``dtype``; zeros among it) or None; every array in ``layout``."""
    g = _geometry(case, act, n_batch)
    n = CASES[case][0]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((g.N, g.C) + g.input_size).astype(dtype)
    w = (rng.standard_normal(g.weight_shape) / 2).astype(dtype)
    gy = (2 * rng.standard_normal(g.output_shape)).astype(dtype)
    out = None
    if act is not None:
        stride, pad, dil = _explicit(case)
        out = apply_activation(conv_nd_ref(x, w, None, stride, pad, dil, g.groups, g.flip), act).astype(dtype)
        out = noncontiguous_view(out, layout, rng)
    x, w, gy = (noncontiguous_view(a, layout, rng) for a in (x, w, gy))
    assert g.nd == n
    return g, x, w, gy, out


def _explicit(case):
    n, xs, ws, stride, padding, dilation, _, flip = CASES[case]
    s, d = _tuple(stride, n), _tuple(dilation, n)
    return s, explicit_padding_nd(padding, ws[2:], s, d, xs[2:], flip), d


def _reference(case, x, w, gy, out=None, act=None):
    """((gx, gw, gb), (magnitudes)) in float64 from the definition, ``gy`` times the derivative first."""
    groups, flip = CASES[case][6], CASES[case][7]
    gz = gy.astype(np.float64)
    if act is not None:
        gz = gz * DERIVATIVES[act](out.astype(np.float64))
    stride, pad, dilation = _explicit(case)
    gx, gw = conv_nd_grads_ref(x, w, gz, stride, pad, dilation, groups, flip)
    mx, mw = conv_nd_grads_ref(np.abs(x.astype(np.float64)), np.abs(w.astype(np.float64)), np.abs(gz), stride,
                               pad, dilation, groups, flip)
    axes = (0,) + tuple(range(2, gz.ndim))
    return (gx, gw, gz.sum(axis=axes)), (mx, mw, np.abs(gz).sum(axis=axes))


def _torch_grads(case, x, w, gy, act):
    """PyTorch autograd in float64: ``F.conv{n}d`` (explicit padding as F.pad, flip as a flipped weight)
    plus the activation, backward with ``gy``; ``(gx, gw, gb)``."""
    F = torch.nn.functional
    n = CASES[case][0]
    stride, pad, dilation = _explicit(case)
    xt = torch.tensor(np.array(x, np.float64), requires_grad=True)
    wt = torch.tensor(np.array(w, np.float64), requires_grad=True)
    bt = torch.zeros(w.shape[0], dtype=torch.float64, requires_grad=True)
    xpad = F.pad(xt, [v for lo_hi in reversed(pad) for v in lo_hi])
    weff = torch.flip(wt, dims=tuple(range(2, 2 + n))) if CASES[case][7] else wt
    conv = F.conv1d if n == 1 else F.conv3d
    z = conv(xpad, weff, bt, stride=stride, dilation=dilation, groups=CASES[case][6])
    y = {None: lambda v: v, "relu": F.relu, "leaky_relu": lambda v: F.leaky_relu(v, 0.01),
         "sigmoid": torch.sigmoid, "tanh": torch.tanh}[act](z)
    y.backward(torch.tensor(np.array(gy, np.float64)))
    return xt.grad.numpy(), wt.grad.numpy(), bt.grad.numpy()


def _public_fn(case):
    return gpuconv.conv1d_backward if CASES[case][0] == 1 else gpuconv.conv3d_backward


def _call(rt, case, gy, x, w, **kwargs):
    """The public backward on NumPy arrays (``rt`` None) or on the CUDA path of ``rt``: ``(grads, record)``."""
    fn = _public_fn(case)
    kwargs = {**_args(case), **kwargs}
    if rt is None:
        grads = fn(gy, x, w, **kwargs)
        return grads, gpuconv.last_kernel()

    def run(rt, gy, x, w, out):
        with use_backend(CudaBackend(rt)):
            grads = fn(gy, x, w, **{**kwargs, "output": out})
            return grads, gpuconv.last_kernel()
    return numpy_io(rt, run, gy, x, w, kwargs.pop("output", None))


def _check(case, dtype, grads, x, w, gy, out, act, mask=(True, True, True)):
    exp, mag = _reference(case, x, w, gy, out, act)
    # PyTorch takes the derivative at the float64 pre-activation, gpuconv from ``output`` rounded to ``dtype``
    # (1 - o*o near |o| = 1 differs relatively by far more than the dtype's tolerance): autograd is the
    # oracle for float64, and without an activation; the reference (same ``output``) for every case
    tg = _torch_grads(case, x, w, gy, act) if torch is not None and (act is None or dtype == np.float64) else None
    for i, (got, name) in enumerate(zip(grads, ("grad_input", "grad_weight", "grad_bias"))):
        if not mask[i]:
            assert got is None
            continue
        assert got.dtype == dtype and got.shape == exp[i].shape, (name, got.dtype, got.shape)
        assert_close(got, exp[i], mag[i], dtype, what=f"{case} {act} {name} (reference)")
        if tg is not None:
            assert_close(got, tg[i], mag[i], dtype, what=f"{case} {act} {name} (torch autograd)")


# --------------------------------------------------------------------------------------------
# the public functions
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("case", list(CASES))
def test_numpy_matches_autograd(case, act):
    g, x, w, gy, out = _data(case, np.float64, act)
    grads, rec = _call(None, case, gy, x, w, activation=act, output=out)
    _check(case, np.float64, grads, x, w, gy, out, act)
    assert rec.op == f"conv{g.nd}d" and rec.direction == "backward" and rec.backend == "numpy"
    # 1-D: one pre-pass every gradient reads; 3-D: the N-D strategies apply the derivative in their chunk copies
    prepass = [k for k in rec.kernels if "pre-pass" in k]
    assert prepass == (["activation derivative pre-pass for every gradient (NumPy arrays, 1-D)"]
                       if act is not None and g.nd == 1 else [])
    if g.nd == 3:
        assert rec.kernels[0].startswith(("numpy_col2im3d", "numpy_depthwise_data3d")), rec.kernels


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("case", list(CASES))
def test_cuda_matches_autograd_in_both_thread_orders(rt, case, act):
    dtype = np.float32
    g, x, w, gy, out = _data(case, dtype, act, seed=1)
    (grads, rec), (grads2, rec2) = [_call(with_thread_order(rt, o), case, gy, x, w, activation=act, output=out)
                                    for o in ORDERS]
    _check(case, dtype, grads, x, w, gy, out, act)
    for a, b in zip(grads, grads2):
        assert a.tobytes() == b.tobytes()
    assert rec.kernels == rec2.kernels and rec.direction == "backward"
    ks = rec.kernels
    depthwise = g.Cg == 1 and g.groups > 1
    fname = (B.depthwise1d_name(dtype) if depthwise else B.igemm1d_name(dtype, ACTIVATIONS[act])) if g.nd == 1 \
        else (B.depthwise3d_name(dtype) if depthwise else B.igemm3d_name(dtype, ACTIVATIONS[act]))
    assert sum(k.startswith(fname + " splits=") for k in ks) == 1, ks  # the filter gradient: fused kernel
    assert ks[-1] == B.bias_name(dtype)
    assert not [k for k in ks if "pre-pass" in k], ks  # every kernel applies the derivative itself
    assert ks[0] == f"{BD.kernel_name(dtype, BD.data_tile(g, dtype, *g.input_size), ACTIVATIONS[act], g.nd)} " \
                    f"phases={len(BD.plan(g, *g.input_size, *g.output_size))}", ks  # ONE data-gradient launch


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", ["1d-stride-gt-kernel-asym-groups-flip", "1d-depthwise-mult",
                                  "3d-strided-groups-flip"])
def test_dtypes_and_noncontiguous_on_both_backends(rt, case, dtype):
    g, x, w, gy, out = _data(case, dtype, "tanh", seed=2, layout="sliced")
    assert not x.flags.c_contiguous and not gy.flags.c_contiguous and not out.flags.c_contiguous
    for r in (None, rt):
        grads, _ = _call(r, case, gy, x, w, activation="tanh", output=out)
        _check(case, dtype, grads, x, w, gy, out, "tanh")


@pytest.mark.parametrize("mask", [m for m in itertools.product((True, False), repeat=3)])
@pytest.mark.parametrize("case", ["1d-plain", "3d-strided-groups-flip"])
def test_output_mask(rt, case, mask):
    g, x, w, gy, out = _data(case, np.float64, "sigmoid", seed=3)
    for r in (None, rt):
        grads, rec = _call(r, case, gy, x, w, activation="sigmoid", output=out, output_mask=mask)
        _check(case, np.float64, grads, x, w, gy, out, "sigmoid", mask)
        if not any(mask):
            assert rec.kernels == ("none (output_mask all False)",)
        elif r is not None:  # CUDA: no pre-pass, the kernels apply the derivative
            assert not any("pre-pass" in k for k in rec.kernels)


@pytest.mark.parametrize("n_batch", [0, 1])
@pytest.mark.parametrize("case", ["1d-dilated-same", "3d-depthwise-same"])
def test_batch_of_zero_and_one(rt, case, n_batch):
    g, x, w, gy, out = _data(case, np.float32, "relu", seed=4, n_batch=n_batch)
    for r in (None, rt):
        grads, _ = _call(r, case, gy, x, w, activation="relu", output=out)
        if n_batch == 0:
            gx, gw, gb = grads
            assert gx.shape == x.shape and not gw.any() and not gb.any() and gw.shape == w.shape
        else:
            _check(case, np.float32, grads, x, w, gy, out, "relu")


@pytest.mark.parametrize("case", ["1d-plain", "3d-strided-groups-flip"])
def test_unbatched(rt, case):
    g, x, w, gy, out = _data(case, np.float64, "leaky_relu", seed=5, n_batch=1)
    for r in (None, rt):
        (gx, gw, gb), _ = _call(r, case, gy[0], x[0], w, activation="leaky_relu", output=out[0])
        assert gx.shape == x.shape[1:]
        _check(case, np.float64, (gx[None], gw, gb), x, w, gy, out, "leaky_relu")


@pytest.mark.parametrize("n", [1, 3])
def test_errors_name_the_argument_and_shapes(n):
    case = "1d-plain" if n == 1 else "3d-strided-groups-flip"
    g, x, w, gy, out = _data(case, np.float32, "relu")
    fn, name = _public_fn(case), f"conv{n}d_backward"
    with pytest.raises(ValueError, match=rf"{name}\(\): activation='relu' needs output.*got output=None"):
        fn(gy, x, w, **_args(case), activation="relu")
    with pytest.raises(ValueError, match=rf"{name}\(\): expected output of size .* but got output of size"):
        fn(gy, x, w, **_args(case), activation="relu", output=out[:, :1])
    with pytest.raises(ValueError, match=r"grad_output"):
        fn(gy[:, :1], x, w, **_args(case))
    with pytest.raises(ValueError, match=r"output_mask|mask"):
        fn(gy, x, w, **_args(case), output_mask=(True, True))
    with pytest.raises(ValueError, match=r"[Uu]nknown activation"):
        fn(gy, x, w, **_args(case), activation="gelu", output=out)
    with pytest.raises((ValueError, TypeError), match=r"weight"):
        fn(gy, x, w[..., None], **_args(case))


# --------------------------------------------------------------------------------------------
# the 1-D filter-gradient kernels
# --------------------------------------------------------------------------------------------

def _launch_filter(rt, x, gy, out, g, splits=None):
    launch = B.launch_depthwise1d if B.is_depthwise(g) else B.launch_igemm1d
    return numpy_io(rt, lambda rt, x, gy, out: launch(rt, x, gy, out, g, splits=splits), x, gy, out)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", CASES_1D)
def test_1d_filter_kernel_matches_reference_and_torch_bitwise_in_both_orders(rt, case, dtype):
    g, x, w, gy, _ = _data(case, dtype)
    (gw, kid), (gw2, kid2), (gw3, _) = [_launch_filter(with_thread_order(rt, o), x, gy, None, g)
                                        for o in ORDERS + ("forward",)]
    name = B.depthwise1d_name(dtype) if B.is_depthwise(g) else B.igemm1d_name(dtype)
    assert kid == kid2 and kid.startswith(name + " splits=")
    assert kid.endswith(" + gpuconv::gemm_splitk_reduce<" + B._ct(dtype) + ">")
    assert gw.dtype == dtype and gw.shape == g.weight_shape
    exp, mag = _reference(case, x, w, gy)
    assert_close(gw, exp[1], mag[1], dtype, what=f"{case} {kid}")
    assert gw.tobytes() == gw2.tobytes() == gw3.tobytes()
    if torch is not None and not g.flip:
        stride, pad, dil = _explicit(case)
        if pad[0][0] == pad[0][1]:
            tw = torch.nn.grad.conv1d_weight(torch.tensor(x.astype(np.float64)), g.weight_shape,
                                             torch.tensor(gy.astype(np.float64)), stride=stride, padding=pad[0][0],
                                             dilation=dil, groups=g.groups)
            assert_close(gw, tw.numpy(), mag[1], dtype, what=f"{case} torch.nn.grad.conv1d_weight")


@pytest.mark.parametrize("act", [a for a in ACTS if a is not None])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", ["1d-stride-gt-kernel-asym-groups-flip", "1d-depthwise-mult"])
def test_1d_filter_kernel_fuses_the_activation_derivative(rt, case, dtype, act):
    g, x, w, gy, out = _data(case, dtype, act, seed=6, layout="sliced")
    gw, kid = _launch_filter(rt, x, gy, out, g)
    name = B.depthwise1d_name(dtype) if B.is_depthwise(g) else B.igemm1d_name(dtype, ACTIVATIONS[act])
    assert kid.startswith(name + " ")
    exp, mag = _reference(case, x, w, gy, out, act)
    assert_close(gw, exp[1], mag[1], dtype, what=f"{case} {act}")


@pytest.mark.parametrize("splits", [1, 2, 3, 8])
@pytest.mark.parametrize("case", ["1d-many", "1d-depthwise-long"])
def test_1d_filter_kernel_split_counts_bitwise(rt, case, splits):
    dtype = np.float32
    g, x, w, gy, out = _data(case, dtype, "tanh", seed=7)
    runs = [_launch_filter(with_thread_order(rt, o), x, gy, out, g, splits) for o in ORDERS]
    (gw, kid), (gw2, kid2) = runs
    m = g.N * g.output_size[0]
    ranges, _ = B.ranges(m if B.is_depthwise(g) else -(-m // B.igemm_tile(dtype).bk), splits)
    assert f" splits={ranges} + " in kid and kid == kid2 and gw.tobytes() == gw2.tobytes()
    exp, mag = _reference(case, x, w, gy, out, "tanh")
    assert_close(gw, exp[1], mag[1], dtype, what=f"{case} splits={splits}")


def test_1d_operation_table_and_instantiations():
    algos = ops.operation("conv1d", "backward_filter").algorithms
    assert list(algos) == ["depthwise", "igemm"]
    assert sum("conv1d_backward_filter_igemm" in n for n in B.INSTANTIATIONS) == 3 * len(B.ACTIVATION_CODES)
    assert sum("conv1d_backward_filter_depthwise" in n for n in B.INSTANTIATIONS) == 3
    g = _geometry("1d-depthwise-mult")
    assert algos["igemm"].decline_reason(g, np.float32) is not None
    assert algos["depthwise"].decline_reason(g, np.float32) is None
    with pytest.raises(ValueError, match="depthwise"):
        B.launch_igemm1d(None, np.zeros((2, 4, 29), np.float32), np.zeros(g.output_shape, np.float32), None, g)


def test_1d_filter_gradient_record_on_cuda(rt):
    """``gpuconv.grad.conv1d_weight`` / ``conv1d_bias`` on CUDA arrays: the 1-D kernels, no height-1 view."""
    g, x, w, gy, _ = _data("1d-plain", np.float32)

    def run(rt, x, gy):
        with use_backend(CudaBackend(rt)):
            gw = gpuconv.grad.conv1d_weight(x, w.shape, gy, **_args("1d-plain"))
            k = gpuconv.last_kernel().kernels
            gb = gpuconv.grad.conv1d_bias(gy)
            return gw, gb, k, gpuconv.last_kernel().kernels
    gw, gb, k, kb = numpy_io(rt, run, x, gy)
    assert len(k) == 1 and k[0].startswith(B.igemm1d_name(np.float32) + " splits=")
    assert kb == (B.bias_name(np.float32),)
    exp, mag = _reference("1d-plain", x, w, gy)
    assert_close(gw, exp[1], mag[1], np.float32)
    assert_close(gb, exp[2], mag[2], np.float32)


def test_1d_lowering_where_the_kernels_decline_says_why(rt, monkeypatch):
    g, x, w, gy, out = _data("1d-plain", np.float32, "tanh", seed=8)
    algos = ops.operation("conv1d", "backward_filter").algorithms
    for name in list(algos):
        monkeypatch.setitem(algos, name, dataclasses.replace(algos[name], decline_reason=lambda geom, dtype,
                                                             n=name: f"{n} declines (test)"))
    grads, rec = _call(rt, "1d-plain", gy, x, w, activation="tanh", output=out, output_mask=(False, True, False))
    _check("1d-plain", np.float32, grads, x, w, gy, out, "tanh", (False, True, False))
    assert rec.kernels[0] == "conv1d as conv2d of height 1 (depthwise declines (test); igemm declines (test))"
    assert rec.kernels[1] == "activation derivative pre-pass for the filter gradient (the lowering runs it)"
    assert rec.kernels[2].startswith("conv1d as conv2d of height 1: ")


# --------------------------------------------------------------------------------------------
# memory safety: AddressSanitizer build of the 1-D filter kernels
# --------------------------------------------------------------------------------------------

_ASAN_SCRIPT = r"""
import sys
sys.path.insert(0, sys.argv[1])
import numpy as np
from gpuconv._cuda import conv_backward_filter as B
from gpuconv._cuda import conv_igemm
from gpuconv._cuda.runtime import kernels_dir
from gpuconv._geometry_nd import conv_nd_geometry
from tests.emulator import EmulatedRuntime
from tests.reference import conv_nd_grads_ref

reduces = [conv_igemm.reduce_name(dt) for dt in (np.float16, np.float32, np.float64)]
names = [n for n in B.INSTANTIATIONS if "conv1d_" in n]
rt = EmulatedRuntime(kernels_dir(), {B.SOURCE: names, conv_igemm.SOURCE: reduces}, sanitize=True)
rng = np.random.default_rng(0)
# partial filter and column tiles, reduction tails, taps in both paddings (the column sentinel), flip;
# depthwise with 11 taps (two chunks) and a channel multiplier
CASES = [
    ((2, 6, 19), (140, 3, 5), 2, 2, 3, 1, True, np.float32, "tanh"),
    ((1, 4, 13), (5, 4, 3), 1, 1, ((2, 1),), 2, False, np.float16, None),
    ((3, 8, 9), (6, 8, 7), 1, 1, 4, 1, False, np.float64, "relu"),
    ((2, 3, 40), (6, 1, 11), 3, 3, 5, 2, True, np.float32, "sigmoid"),
]
for xs, ws, groups, stride, padding, dilation, flip, dt, act in CASES:
    g = conv_nd_geometry(1, xs, ws, None, stride, padding, dilation, groups, flip, act)
    x = rng.standard_normal(xs).astype(dt)
    gy = rng.standard_normal(g.output_shape).astype(dt)
    out = None if act is None else rng.uniform(0.1, 0.9, g.output_shape).astype(dt)
    launch = B.launch_depthwise1d if B.is_depthwise(g) else B.launch_igemm1d
    for splits in (1, 3):
        gw, _ = launch(rt, x, gy, out, g, splits=splits)
        gz = gy.astype(np.float64)
        o = None if out is None else out.astype(np.float64)
        if act == "tanh":
            gz = gz * (1 - o ** 2)
        elif act == "sigmoid":
            gz = gz * o * (1 - o)
        elif act == "relu":
            gz = gz * (o > 0)
        _, ref = conv_nd_grads_ref(x, np.zeros(ws), gz, g.stride, g.padding, g.dilation, groups, flip)
        tol = 5e-2 if dt == np.float16 else 1e-4
        assert np.allclose(ref, gw.astype(np.float64), rtol=tol, atol=tol), (xs, splits)
print("asan ok")
"""


@pytest.mark.emulated
@pytest.mark.slow  # a g++ AddressSanitizer build in a subprocess: CI runs it (-m slow)
def test_1d_filter_kernels_no_out_of_bounds_access_under_asan():
    """The 1-D filter kernels at tile edges, compiled with -fsanitize=address: any read or write past x, gy,
    out or the workspace fails."""
    from pathlib import Path

    from tests.emulator import run_script_under_asan
    proc = run_script_under_asan(_ASAN_SCRIPT, Path(__file__).resolve().parent.parent)
    assert proc.returncode == 0 and "asan ok" in proc.stdout, (proc.stdout + proc.stderr)[-6000:]
