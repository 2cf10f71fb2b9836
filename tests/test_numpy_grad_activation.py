"""The NumPy path's ``conv2d_backward(..., activation=..., output=...)`` with the activation's derivative fused
into the chunk copies of ``gy`` (``gpuconv/_numpy/grad_activation.py``; issue 17: "the activation's derivative
is applied inside the kernels ... not as a separate pass").

* ``act_backward_into``: CUDA ``act_backward``'s formulas (kernels/common.cuh) bit for bit, special values
  included (NaN / infinite ``out`` and ``gy``, signed zeros), any views, any block cut.
* Each strategy (``numpy_col2im`` wide rows, exact rows, row chunks; ``numpy_im2col_filter`` in sample chunks;
  ``numpy_depthwise_filter_planes``; the lowering's 1x1 / depthwise data gradients and the workspace
  fallbacks, which keep the pre-pass and say so in the record), each activation, each dtype, several
  ``output_mask``s: against the pre-pass form (``gy * act'(out)`` computed here by ``np.where`` formulas,
  then ``conv2d_backward`` without activation) BITWISE for float32 / float64 data and filter gradients (the
  same products in the same order), within the shared tolerance for the bias (summed per chunk) and for
  float16 (the fused product stays float32, the pre-pass rounded it); against the float64 textbook
  reference; against PyTorch autograd of ``act(F.conv2d(...))``.
* The pre-pass does not run where the strategies run (``activation_derivative_times`` monkeypatched to
  fail), and the peak memory (tracemalloc) stays within outputs + workspace limit (which holds the
  derivative's block temporaries) + small arrays, far below one array of ``gy``'s size; the data gradient
  the lowering runs takes the pre-pass per chunk of samples (bitwise the whole pre-pass's result for
  float32 / float64), one chunk of memory; with every sample in one chunk, the whole pre-pass.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import gpuconv
from gpuconv import _grad_conv as G
from gpuconv._numpy import _workspace, conv_grad
from gpuconv._numpy import grad_activation as GA
from tests.reference import conv_nd_grads_ref, explicit_padding, pair
from tests.runners import torch
from tests.tolerance import assert_close

ACTS = ["relu", "leaky_relu", "sigmoid", "tanh"]
DTYPES = [np.float16, np.float32, np.float64]
PRE = "activation derivative pre-pass"

# name: x shape, w shape, conv kwargs, workspace MiB (None: the default; a dict: per dtype), chosen so that
# every dtype runs the same strategies (test_cases_reach_their_plans)
SMALL_CHUNKS = {np.float16: "0.02", np.float32: "0.02", np.float64: "0.03"}
CASES = {
    "col2im-wide": ((3, 5, 9, 16), (6, 5, 3, 3), dict(padding=1), None),
    "col2im-wide-chunks": ((3, 5, 9, 16), (6, 5, 3, 3), dict(padding=1), "0.08"),
    "col2im-exact-s2-same-flip": ((2, 4, 9, 10), (5, 4, 3, 3), dict(stride=2, padding="same", flip=True), None),
    "col2im-row-chunks": ((3, 5, 9, 16), (6, 5, 3, 3), dict(padding=1), "0.02"),
    "groups-asym-dil": ((3, 4, 11, 9), (4, 2, 2, 4),
                        dict(stride=(1, 2), padding=((0, 2), (3, 1)), dilation=(2, 1), groups=2, flip=True),
                        SMALL_CHUNKS),
    "depthwise-planes": ((2, 6, 8, 7), (12, 1, 3, 3), dict(padding=1, groups=6), None),
    "depthwise-s2": ((3, 5, 9, 8), (5, 1, 3, 3), dict(stride=2, padding=1, groups=5), None),
    "1x1": ((2, 6, 9, 8), (4, 6, 1, 1), dict(stride=2), None),
    "nothing-fits": ((3, 5, 9, 16), (6, 5, 3, 3), dict(padding=1), "0.0015"),
}
# what runs, per case: (data fused?, filter fused?) -- where not fused, the pre-pass runs and is recorded
FUSED = {"depthwise-planes": (False, True), "depthwise-s2": (False, True), "1x1": (False, True),
         "nothing-fits": (False, False), "col2im-row-chunks": (True, False)}
FILTER_KERNEL = {"depthwise-planes": "numpy_depthwise_filter_planes", "depthwise-s2": "numpy_depthwise_filter_planes"}
MASKS = [(True, True, True), (False, True, True), (True, False, False), (False, False, True)]


def _where_formula(g, o, act):
    """dL/dz from the activated output, in the compute dtype (np.where: independent of act_backward_into)."""
    ct = np.float32 if g.dtype == np.float16 else g.dtype.type
    g, o = g.astype(ct), o.astype(ct)
    with np.errstate(all="ignore"):
        return {"relu": lambda: np.where(o > 0, g, ct(0)), "leaky_relu": lambda: np.where(o > 0, g, g * ct(0.01)),
                "sigmoid": lambda: g * (1 - o) * o, "tanh": lambda: g * (1 - o * o)}[act]()


def _data(name, dtype, act, seed=0):
    xs, ws, kw, _ = CASES[name]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(xs).astype(dtype)
    w = (rng.standard_normal(ws) / np.sqrt(np.prod(ws[1:]))).astype(dtype)
    out = gpuconv.conv2d(x, w, rng.standard_normal(ws[0]).astype(dtype) * 0.3, activation=act, **kw)
    gy = rng.standard_normal(out.shape).astype(dtype)
    return x, w, out, gy, kw


def _same_bits(a, b) -> bool:
    """Bitwise equal, NaN positions equal (a NaN's sign and payload mean nothing: SIMD and scalar loops differ)."""
    a, b = np.array(a), np.array(b)
    nan = np.isnan(a)
    if a.shape != b.shape or not np.array_equal(nan, np.isnan(b)):
        return False
    a[nan], b[nan] = 0, 0
    return a.tobytes() == b.tobytes()


@pytest.fixture
def workspace_mb(monkeypatch):
    def set_mb(mb, dtype=np.float32):
        mb = mb.get(dtype) if isinstance(mb, dict) else mb
        if mb is None:
            monkeypatch.delenv("GPUCONV_NUMPY_WORKSPACE_MB", raising=False)
        else:
            monkeypatch.setenv("GPUCONV_NUMPY_WORKSPACE_MB", mb)
        _workspace.release_workspace()
    yield set_mb
    _workspace.release_workspace()


# --------------------------------------------------------------------------------------------
# the formulas
# --------------------------------------------------------------------------------------------

SPECIAL = np.array([0.0, -0.0, 1.0, -1.0, 0.5, 2.0, 1e-30, -1e-30, 1e30, np.inf, -np.inf, np.nan])


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_act_backward_into_is_cuda_act_backward_bitwise(monkeypatch, act, dtype):
    """Every pair of special values, as contiguous and as transposed views, with blocks of a few values (the
    block cut on every axis) and the default blocks: the bits of ``o > 0 ? g : 0`` etc. in the compute dtype."""
    with np.errstate(over="ignore"):
        g, o = (a.astype(dtype) for a in np.meshgrid(SPECIAL, SPECIAL))
    g3, o3 = np.stack([g, -g, 2 * g]), np.stack([o, o, -o])  # (3, 12, 12)
    ct = np.float32 if dtype == np.float16 else dtype
    expected = _where_formula(g3, o3, act)
    for block in (GA.DERIVATIVE_BLOCK, 5, 12, 40):
        monkeypatch.setattr(GA, "DERIVATIVE_BLOCK", block)
        views = ((g3, o3, expected), tuple(a.transpose(2, 0, 1) for a in (g3, o3, expected)))
        for gv, ov, ev in views:
            d = np.empty(gv.shape, ct)
            with np.errstate(all="ignore"):
                GA.act_backward_into(d, gv, ov, act)
            assert _same_bits(d, ev), (block, act)


def test_act_backward_into_blocks_cover_every_element():
    for shape in [(), (7,), (3, 70000), (2, 5, 40000), (1, 1, 300, 300), (4, 1, 2, 3)]:
        seen = np.zeros(shape, int)
        for idx in GA._blocks(shape, GA.DERIVATIVE_BLOCK):
            seen[idx] += 1
            assert seen[idx].size <= GA.DERIVATIVE_BLOCK
        assert (seen == 1).all(), shape


def test_prepass_helper_uses_the_same_formulas():
    rng = np.random.default_rng(1)
    for dtype in DTYPES:
        g, o = rng.standard_normal((2, 3, 4, 5)).astype(dtype), rng.standard_normal((2, 3, 4, 5)).astype(dtype)
        for act in ACTS:
            got = G.activation_derivative_times(np, g, o, act)
            assert got.dtype == dtype
            assert _same_bits(got, _where_formula(g, o, act).astype(dtype))


# --------------------------------------------------------------------------------------------
# each strategy against the pre-pass form, the reference and the record
# --------------------------------------------------------------------------------------------

def _expected_record(name, mask):
    data_fused, filter_fused = FUSED.get(name, (True, True))
    kernels = []
    prepass = False
    if mask[0]:
        if not data_fused:
            kernels.append(PRE + " for the data gradient")
            prepass = True
        else:
            kernels.append("numpy_col2im")
    if mask[1]:
        if not filter_fused:
            kernels.append(PRE + " for the filter gradient")
            prepass = True
        else:
            kernels.append(FILTER_KERNEL.get(name, "numpy_im2col_filter"))
    if mask[2]:
        kernels.append("numpy.sum" if prepass and not (mask[1] and filter_fused) else
                       "numpy.sum (in the filter gradient's chunks)" if mask[1] else "numpy.sum (chunks of gy * act')")
    return kernels


def _check_record(name, mask, record):
    """The record's entries in order, each expected one a prefix of its entry (the lowering's forward kernels
    after a pre-pass note are not listed in ``_expected_record``)."""
    expected = _expected_record(name, mask)
    got = list(record)
    for e in expected:
        while got and not got[0].startswith(e):
            assert not got[0].startswith(PRE), (name, mask, record)
            assert not got[0].startswith("numpy.sum"), (name, mask, record)
            got.pop(0)
        assert got, (name, mask, expected, record)
        got.pop(0)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_cases_reach_their_plans(workspace_mb, dtype):
    """The cases' workspace limits give every dtype the strategies ``FUSED`` says, in several chunks."""
    from gpuconv._geometry import conv_geometry
    for name, (xs, ws, kw, mb) in CASES.items():
        workspace_mb(mb, dtype)
        g = conv_geometry(xs, ws, None, kw.get("stride", 1), kw.get("padding", 0), kw.get("dilation", 1),
                          kw.get("groups", 1), kw.get("flip", False))
        data, filt = FUSED.get(name, (True, True))
        for act in [None] + [GA.Derivative(None, a) for a in ACTS]:
            assert (conv_grad.data_decline_reason(g, dtype, g.H, g.W, g.P, g.Q, act) is None) == data, (name, act)
            assert bool(conv_grad.filter_strategy(g, dtype, act)
                        or conv_grad.depthwise_filter_applies(g, dtype, act)) == filt, (name, act)
        plan = conv_grad._data_plan(g, dtype, g.H, g.W, g.P, g.Q)
        if name == "col2im-wide-chunks":
            assert plan[2] and plan[0] < g.N, (name, plan)
        if name in ("col2im-row-chunks",):
            assert plan[0] == 1 and plan[1] < g.P and not plan[2], (name, plan)
        if name == "groups-asym-dil" and dtype == np.float32:
            assert plan[0] < g.N, (name, plan)


@pytest.mark.parametrize("mask", MASKS, ids=lambda m: "".join("TF"[not v] for v in m))
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("name", list(CASES))
def test_fused_matches_prepass_and_reference(workspace_mb, name, act, mask):
    for dtype in DTYPES:
        workspace_mb(CASES[name][3], dtype)
        x, w, out, gy, kw = _data(name, dtype, act)
        got = G.conv2d_backward(gy, x, w, **kw, activation=act, output=out, output_mask=mask)
        _check_record(name, mask, gpuconv.last_kernel().kernels)
        gz = _where_formula(gy, out, act)  # dL/dz in the compute dtype
        pre = G.conv2d_backward(gz.astype(dtype), x, w, **kw, output_mask=mask)
        # the float64 reference of gz as each gradient used it: unrounded where fused, rounded to the dtype
        # after a pre-pass (the data gradient's, or the filter's; what follows a pre-pass reads it)
        data_fused, filter_fused = FUSED.get(name, (True, True))
        pre_data = mask[0] and not data_fused
        pre_any = pre_data or (mask[1] and not filter_fused)
        used = [gz.astype(dtype) if p else gz for p in (pre_data, pre_data or not filter_fused, pre_any)]
        stride, dil = pair(kw.get("stride", 1)), pair(kw.get("dilation", 1))
        pt, pb, pl, pr = explicit_padding(kw.get("padding", 0), w.shape[2:], stride, dil, x.shape[2:],
                                          kw.get("flip", False))
        args = (stride, ((pt, pb), (pl, pr)), dil, kw.get("groups", 1), kw.get("flip", False))
        ex, ew = conv_nd_grads_ref(x, w, used[0], *args)[0], conv_nd_grads_ref(x, w, used[1], *args)[1]
        mx = conv_nd_grads_ref(np.abs(x), np.abs(w), np.abs(used[0]), *args)[0]
        mw = conv_nd_grads_ref(np.abs(x), np.abs(w), np.abs(used[1]), *args)[1]
        gb64 = used[2].astype(np.float64)
        refs = [(ex, mx), (ew, mw), (gb64.sum(axis=(0, 2, 3)), np.abs(gb64).sum(axis=(0, 2, 3)))]
        for i, (a, p, (e, m)) in enumerate(zip(got, pre, refs)):
            if not mask[i]:
                assert a is None
                continue
            what = f"{name} {act} {np.dtype(dtype).name} {['grad_input', 'grad_weight', 'grad_bias'][i]}"
            assert a.dtype == dtype and a.shape == p.shape, what
            if dtype == np.float16:  # results below float16's smallest normal are subnormal: spacing 2**-24
                m = np.maximum(m, np.finfo(np.float16).tiny)
            assert_close(a, e, m, dtype, what=what)
            # the same chunks, so the same order of sums, unless relu / leaky_relu's temporaries made a small
            # workspace's chunks smaller (then within the tolerance, as float16)
            same_order = CASES[name][3] is None or act in ("sigmoid", "tanh")
            if dtype != np.float16 and i < 2 and same_order:
                assert _same_bits(a, p), what + ": not bitwise the pre-pass form"
            elif dtype != np.float16:
                assert_close(a, p.astype(np.float64), m, dtype, what=what + " vs pre-pass")


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("name", ["col2im-wide", "col2im-exact-s2-same-flip", "depthwise-s2"])
def test_bitwise_deterministic(workspace_mb, monkeypatch, name, act):
    workspace_mb(CASES[name][3])
    x, w, out, gy, kw = _data(name, np.float32, act, seed=4)
    runs = [G.conv2d_backward(gy, x, w, **kw, activation=act, output=out) for _ in range(2)]
    monkeypatch.setenv("GPUCONV_NUMPY_THREADS", "1")
    runs.append(G.conv2d_backward(gy, x, w, **kw, activation=act, output=out))
    for r in runs[1:]:
        assert all(a.tobytes() == b.tobytes() for a, b in zip(r, runs[0]))


def test_non_contiguous_operands(workspace_mb):
    workspace_mb("0.04")
    for dtype in DTYPES:
        x, w, out, gy, kw = _data("col2im-wide", dtype, "tanh", seed=2)
        base = G.conv2d_backward(gy, x, w, **kw, activation="tanh", output=out)
        views = [np.ascontiguousarray(a.swapaxes(2, 3)).swapaxes(2, 3) for a in (gy, x, w, out)]
        got = G.conv2d_backward(views[0], views[1], views[2], **kw, activation="tanh", output=views[3])
        assert all(np.array_equal(a, b) for a, b in zip(got, base))
        sliced = [np.repeat(a, 2, axis=1)[:, ::2] for a in (gy, out)]  # every other channel: a itself
        got = G.conv2d_backward(sliced[0], x, w, **kw, activation="tanh", output=sliced[1])
        assert all(np.array_equal(a, b) for a, b in zip(got, base))


def test_unbatched_and_empty_batch():
    x, w, out, gy, kw = _data("col2im-wide", np.float64, "sigmoid")
    got = G.conv2d_backward(gy[1], x[1], w, **kw, activation="sigmoid", output=out[1])
    full = G.conv2d_backward(gy[1:2], x[1:2], w, **kw, activation="sigmoid", output=out[1:2])
    assert got[0].shape == x.shape[1:] and np.array_equal(got[0], full[0][0])
    assert np.array_equal(got[1], full[1]) and np.allclose(got[2], full[2], rtol=1e-15, atol=0)
    e = G.conv2d_backward(gy[:0], x[:0], w, **kw, activation="relu", output=out[:0])
    assert e[0].shape == x[:0].shape and not e[1].any() and not e[2].any()


@pytest.mark.parametrize("workspace", [None, "0.001", "0.0001"])
def test_bias_alone_in_chunks(workspace_mb, workspace):
    """``output_mask=(False, False, True)``: ``bias_gradient``'s chunks of samples, filters, then rows."""
    workspace_mb(workspace)
    x, w, out, gy, kw = _data("col2im-wide", np.float32, "leaky_relu")
    gb = G.conv2d_backward(gy, x, w, **kw, activation="leaky_relu", output=out, output_mask=(False, False, True))[2]
    gz = _where_formula(gy, out, "leaky_relu").astype(np.float64)
    assert_close(gb, gz.sum(axis=(0, 2, 3)), np.abs(gz).sum(axis=(0, 2, 3)), np.float32)
    assert gpuconv.last_kernel().kernels == ("numpy.sum (chunks of gy * act')",)


def test_depthwise_non_finite_falls_back_to_the_prepass():
    x, w, out, gy, kw = _data("depthwise-planes", np.float64, "relu")
    x[0, 1, 2, 3] = np.inf
    got = G.conv2d_backward(gy, x, w, **kw, activation="relu", output=out, output_mask=(False, True, True))
    rec = gpuconv.last_kernel().kernels
    assert rec[0].startswith(PRE + " for the filter gradient (numpy_depthwise_filter_planes met a non-finite")
    pre = G.conv2d_backward(_where_formula(gy, out, "relu"), x, w, **kw, output_mask=(False, True, True))
    np.testing.assert_array_equal(got[1], pre[1])
    np.testing.assert_array_equal(got[2], pre[2])


# --------------------------------------------------------------------------------------------
# PyTorch autograd
# --------------------------------------------------------------------------------------------

@pytest.mark.skipif(torch is None, reason="PyTorch not installed")
@pytest.mark.torch
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("name", list(CASES))
def test_match_torch_autograd(workspace_mb, name, act):
    workspace_mb(CASES[name][3], np.float64)
    x, w, _, _, kw = _data(name, np.float64, act, seed=7)
    b = np.random.default_rng(8).standard_normal(w.shape[0]) * 0.3
    F = torch.nn.functional
    stride, dil = pair(kw.get("stride", 1)), pair(kw.get("dilation", 1))
    pt, pb, pl, pr = explicit_padding(kw.get("padding", 0), w.shape[2:], stride, dil, x.shape[2:],
                                      kw.get("flip", False))
    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    z = F.conv2d(F.pad(xt, (pl, pr, pt, pb)), wt.flip(2, 3) if kw.get("flip") else wt, bt, stride, 0, dil,
                 kw.get("groups", 1))
    y = {"relu": F.relu, "leaky_relu": F.leaky_relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh}[act](z)
    gy = np.random.default_rng(9).standard_normal(tuple(y.shape))
    y.backward(torch.tensor(gy))
    out = gpuconv.conv2d(x, w, b, **kw, activation=act)
    np.testing.assert_allclose(out, y.detach().numpy(), rtol=1e-12, atol=1e-12)
    gx, gw, gb = G.conv2d_backward(gy, x, w, **kw, activation=act, output=out)
    for got, exp in ((gx, xt.grad), (gw, wt.grad), (gb, bt.grad)):
        np.testing.assert_allclose(got, exp.numpy(), rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------------------------------------
# no pre-pass, bounded memory
# --------------------------------------------------------------------------------------------

def _no_prepass(*args, **kwargs):
    raise AssertionError("pre-pass called")


@pytest.mark.parametrize("mask", MASKS, ids=lambda m: "".join("TF"[not v] for v in m))
@pytest.mark.parametrize("name", [n for n in CASES if FUSED.get(n, (True, True)) == (True, True)]
                         + ["depthwise-planes"])
def test_prepass_does_not_run_where_the_strategies_run(workspace_mb, monkeypatch, name, mask):
    if name == "depthwise-planes" and mask[0]:
        pytest.skip("the depthwise data gradient runs the lowering (pre-pass)")
    workspace_mb(CASES[name][3])
    x, w, out, gy, kw = _data(name, np.float32, "tanh")
    monkeypatch.setattr(G, "activation_derivative_times", _no_prepass)
    G.conv2d_backward(gy, x, w, **kw, activation="tanh", output=out, output_mask=mask)
    assert not any(k.startswith(PRE) for k in gpuconv.last_kernel().kernels)


def test_prepass_runs_and_is_recorded_where_the_lowering_runs(monkeypatch):
    x, w, out, gy, kw = _data("1x1", np.float32, "relu")
    monkeypatch.setattr(G, "activation_derivative_times", _no_prepass)
    with pytest.raises(AssertionError, match="pre-pass called"):
        G.conv2d_backward(gy, x, w, **kw, activation="relu", output=out, output_mask=(True, False, False))


def _peak(call):
    _workspace.release_workspace()
    tracemalloc.start()
    result = call()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    _workspace.release_workspace()
    return result, peak


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_peak_memory_within_outputs_plus_workspace(monkeypatch, dtype):
    """Temporaries beyond the three results (tracemalloc, NumPy's allocations): within the workspace limit
    (which the strategies keep the derivative's block temporaries in, per thread), plus the transposed weight
    and small arrays (NumPy's ufunc buffers, ``UFUNC_BUFFERS`` per thread); ``gy`` is 8x the limit (2x for float16),
    so a pre-pass (one array of its size, as the 1x1 case below shows) could not hide in the bound."""
    limit_mb = 2
    monkeypatch.setenv("GPUCONV_NUMPY_WORKSPACE_MB", str(limit_mb))
    rng = np.random.default_rng(0)
    ct = np.dtype(np.float32 if dtype == np.float16 else dtype)
    n = 64 if dtype == np.float32 else 32  # float16: the exact-rows plan's float32 accumulator of gx must fit
    for xs, ws, kw, mask in (((n, 8, 32, 32), (64, 8, 3, 3), dict(padding=1), (True, True, True)),
                             ((n, 32, 32, 32), (64, 1, 3, 3), dict(padding=1, groups=32), (False, True, True))):
        x, w = rng.standard_normal(xs).astype(dtype), rng.standard_normal(ws).astype(dtype)
        for act in ("relu", "leaky_relu", "sigmoid"):
            out = gpuconv.conv2d(x, w, None, **kw, activation=act)
            gy = rng.standard_normal(out.shape).astype(dtype)
            assert gy.nbytes >= (2 if dtype == np.float16 else 8) * limit_mb * 2**20
            (gx, gw, gb), peak = _peak(lambda: G.conv2d_backward(gy, x, w, **kw, activation=act, output=out,
                                                                  output_mask=mask))
            kernels = gpuconv.last_kernel().kernels
            assert not any(k.startswith(PRE) for k in kernels), kernels
            results = sum(a.nbytes for a in (gx, gw, gb) if a is not None)
            bound = limit_mb * 2**20 + 4 * w.nbytes + 2 * GA.UFUNC_BUFFERS + 2**16  # 2 pool threads' ufunc buffers
            assert peak - results <= bound, (act, kernels, peak, results)
    # the 1x1 data gradient runs the lowering on a pre-pass per chunk of samples: a chunk, not gy
    x, w = rng.standard_normal((n, 8, 32, 32)).astype(dtype), rng.standard_normal((64, 8, 1, 1)).astype(dtype)
    out = gpuconv.conv2d(x, w, None, activation="relu")
    gy = rng.standard_normal(out.shape).astype(dtype)
    (gx, _, _), peak = _peak(lambda: G.conv2d_backward(gy, x, w, activation="relu", output=out,
                                                         output_mask=(True, False, False)))
    kernels = gpuconv.last_kernel().kernels
    chunk = GA.prepass_samples(gy, gx[0].size)
    assert chunk < n and kernels[0].startswith(PRE + f" for the data gradient, per chunk of {chunk} samples")
    assert peak - gx.nbytes <= 1.25 * limit_mb * 2**20 + 2 * GA.UFUNC_BUFFERS + 2**16 < gy.nbytes, (kernels, peak)
    # one chunk holding every sample: the whole pre-pass, one array of gy's size
    monkeypatch.setenv("GPUCONV_NUMPY_WORKSPACE_MB", "256")
    monkeypatch.setattr(GA, "CHUNK_BYTES", 2**40)
    (gx, _, _), peak = _peak(lambda: G.conv2d_backward(gy, x, w, activation="relu", output=out,
                                                         output_mask=(True, False, False)))
    assert gpuconv.last_kernel().kernels[0] == (PRE + " for the data gradient (the lowering runs it: 1x1 filter "
                                                "without padding: one matmul per phase)")
    assert peak - gx.nbytes >= gy.nbytes


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("name", ["1x1", "depthwise-s2", "nothing-fits"])
def test_data_prepass_per_chunk_of_samples(workspace_mb, monkeypatch, name, act):
    """Where the lowering runs the data gradient, a gy larger than a chunk gets the pre-pass per chunk of
    samples (forced here: chunks of 1 and 2 samples): the same gradient as the whole pre-pass (float32 /
    float64: bitwise, each sample's lowering calls being the same; float16 within the tolerance), the
    record naming the chunks; the filter gradient then fuses its own derivative."""
    for dtype in DTYPES:
        workspace_mb(CASES[name][3], dtype)
        x, w, out, gy, kw = _data(name, dtype, act, seed=11)
        whole = G.conv2d_backward(gy, x, w, **kw, activation=act, output=out)
        for chunk in [c for c in (1, 2) if c < x.shape[0]]:
            monkeypatch.setattr(GA, "prepass_samples", lambda gy, gx_per_sample, c=chunk: c)
            got = G.conv2d_backward(gy, x, w, **kw, activation=act, output=out)
            kernels = gpuconv.last_kernel().kernels
            assert kernels[0].startswith(PRE + f" for the data gradient, per chunk of {chunk} samples (the lowering")
            e = _where_formula(gy, out, act).astype(np.float64)
            stride, dil = pair(kw.get("stride", 1)), pair(kw.get("dilation", 1))
            pt, pb, pl, pr = explicit_padding(kw.get("padding", 0), w.shape[2:], stride, dil, x.shape[2:])
            args = (stride, ((pt, pb), (pl, pr)), dil, kw.get("groups", 1), False)
            ex = conv_nd_grads_ref(x, w, e.astype(dtype), *args)[0]
            mx = conv_nd_grads_ref(np.abs(x), np.abs(w), np.abs(e), *args)[0]
            if dtype == np.float16:
                mx = np.maximum(mx, np.finfo(np.float16).tiny)
            assert_close(got[0], ex, mx, dtype, what=f"{name} {act} chunks of {chunk}")
            if dtype != np.float16:
                assert _same_bits(got[0], whole[0]), (name, act, chunk)
            for a, b in zip(got[1:], whole[1:]):
                np.testing.assert_allclose(a.astype(np.float64), b.astype(np.float64), rtol=1e-2 if dtype ==
                                           np.float16 else 1e-5, atol=1e-2 if dtype == np.float16 else 1e-5)
        monkeypatch.undo()
