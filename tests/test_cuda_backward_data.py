"""The CUDA data gradient as one launch (issue 17): ``conv2d_backward_data<T, tile, ACT>``
(``kernels/conv2d_backward_data.cu``, host ``gpuconv/_cuda/conv_backward_data.py``).

* Launch level, on the emulator in both thread orders (and on a GPU where there is one): every stride phase
  in one launch against the definition (``tests/reference.py`` ``conv_nd_grads_ref``, the tolerance model) and
  PyTorch autograd (``torch.nn.grad.conv2d_input``, when installed): strides 1..4 with stride > kernel
  (phases no tap reaches), stride with dilation sharing a factor (gcd 2: tapless phases) or not,
  asymmetric / 'same' padding, groups and depthwise, flip, odd sizes that are no tile multiple (two pixel
  tiles and two channel tiles), N = 1 / 3, float16 / float32 / float64, non-contiguous ``gy``, both tiles;
  the bytes equal in both thread orders; ``gx`` poisoned beforehand (NaN) must be fully overwritten.
* Public level (emulated): ``conv2d_input``, ``conv_transpose2d`` with ``output_padding`` (also past the
  stride, allowed by a larger dilation), ``conv2d_backward``; N = 0 / 1 / 3; the record names one launch;
  more than 64 phases take two launches; where the kernel declines (its 32-bit rule) the lowering runs and
  the record says why.
* Host rules: the phase plan against the lowering's ``axis_phases``, the packed sub-filters (at most
  ``|w|``), the parameter block's layout, the tile rule, the 32-bit rule.
The fused activation derivative: tests/test_cuda_dgrad_activation.py.
"""

from __future__ import annotations

import numpy as np
import pytest

import gpuconv
from gpuconv import _conv_lowering as L
from gpuconv._backend import CudaBackend, use_backend
from gpuconv._cuda import conv_backward_data as BD
from gpuconv._cuda.gemm import LARGE_TILE, SMALL_TILE, TILES_BY_DTYPE, WIDE_TILE
from gpuconv._geometry import conv_geometry
from tests.reference import conv_nd_grads_ref, explicit_padding, pair
from tests.runners import emulated_runtime, numpy_io, runtime_fixture, torch, with_thread_order
from tests.support import PoisonedEmpty, noncontiguous_view
from tests.tolerance import assert_close

rt = runtime_fixture()

DTYPES = (np.float16, np.float32, np.float64)

# x shape, w shape, stride, padding, dilation, groups, flip
CASES = {
    "s1-same-flip": ((2, 3, 9, 7), (5, 3, 4, 3), 1, "same", (1, 2), 1, True),
    "s2-asym-dil2-groups": ((3, 4, 11, 10), (6, 2, 3, 2), 2, ((1, 0), (2, 1)), (2, 1), 2, False),
    "s3-kernel2": ((1, 3, 10, 9), (4, 3, 2, 2), 3, 0, 1, 1, False),
    "s4x3-dil6x2-flip": ((1, 2, 13, 12), (3, 2, 2, 3), (4, 3), 1, (6, 2), 1, True),
    "s4-kernel3-pad2": ((2, 3, 11, 13), (2, 3, 3, 3), 4, 2, 1, 1, False),
    "dw-s2": ((1, 3, 9, 9), (6, 1, 3, 3), 2, 1, 1, 3, False),
    "two-tiles-s2": ((3, 70, 17, 15), (5, 70, 3, 3), 2, 1, 1, 1, False),
}


def _geometry(case):
    xs, ws, stride, padding, dilation, groups, flip = CASES[case]
    return conv_geometry(xs, ws, None, stride, padding, dilation, groups, flip)


def _explicit(case):
    xs, ws, stride, padding, dilation, _, flip = CASES[case]
    stride, dilation = pair(stride), pair(dilation)
    pt, pb, pl, pr = explicit_padding(padding, ws[2:], stride, dilation, xs[2:], flip)
    return stride, ((pt, pb), (pl, pr)), dilation


def _data(case, dtype, seed, layout="transposed"):
    g = _geometry(case)
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal(g.weight_shape) / 3).astype(dtype)
    gy = rng.standard_normal(g.output_shape).astype(dtype)
    return g, noncontiguous_view(gy, layout, rng), w


def _reference(case, gy, w):
    """(gx, magnitude) in float64 from the definition."""
    xs, _, _, _, _, groups, flip = CASES[case]
    stride, pad, dilation = _explicit(case)
    x0 = np.zeros(xs)
    gx, _ = conv_nd_grads_ref(x0, w, gy, stride, pad, dilation, groups, flip)
    mag, _ = conv_nd_grads_ref(x0, np.abs(w.astype(np.float64)), np.abs(gy.astype(np.float64)), stride, pad,
                               dilation, groups, flip)
    return gx, mag


def _torch_input_grad(case, gy, w):
    xs, _, _, _, _, groups, flip = CASES[case]
    stride, pad, dilation = _explicit(case)
    (pt, pb), (pl, pr) = pad
    wt = torch.tensor(np.array(w, dtype=np.float64))
    wt = wt.flip(2, 3) if flip else wt
    padded = (xs[0], xs[1], xs[2] + pt + pb, xs[3] + pl + pr)
    g = torch.nn.grad.conv2d_input(padded, wt, torch.tensor(np.array(gy, dtype=np.float64)), stride, 0, dilation,
                                   groups)
    return g[:, :, pt:pt + xs[2], pl:pl + xs[3]].numpy()


def _launch(rt, g, gy, w, tile=None, out=None):
    def run(rt, gy, w, out):
        return BD.launch(rt, gy, w, out, g, g.H, g.W, tile=tile)
    return numpy_io(rt, run, gy, w, out)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", list(CASES))
def test_one_launch_against_reference(rt, case, dtype):
    g, gy, w = _data(case, dtype, seed=1)
    assert not gy.flags.c_contiguous
    (gx, ids), (gx2, ids2) = (_launch(with_thread_order(rt, o), g, gy, w) for o in ("forward", "reversed"))
    tile = BD.data_tile(g, dtype, g.H, g.W)
    phases = len(BD.plan(g, g.H, g.W, *g.output_shape[2:]))
    assert ids == ids2 == [f"{BD.kernel_name(dtype, tile, 0)} phases={phases}"]
    assert gx.dtype == dtype and gx.shape == g.input_shape and gx.flags.c_contiguous
    assert gx.tobytes() == gx2.tobytes(), "thread orders differ"
    exp, mag = _reference(case, gy, w)
    assert_close(gx, exp, mag, dtype, what=f"{case} vs reference")
    if torch is not None and np.dtype(dtype) == np.float64:
        np.testing.assert_allclose(gx, _torch_input_grad(case, gy, w), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("tile", (SMALL_TILE, WIDE_TILE), ids=lambda t: t.name)
@pytest.mark.parametrize("case", ("two-tiles-s2", "s3-kernel2"))
def test_both_tiles_and_poisoned_output(rt, case, tile):
    """Each instantiated float32 tile, forced; ``gx`` allocated full of NaN: every element (the tapless
    phases' zeros included) must be written by the kernel."""
    g, gy, w = _data(case, np.float32, seed=2, layout="sliced")

    def run(rt, gy, w):
        return BD.launch(PoisonedEmpty(rt), gy, w, None, g, g.H, g.W, tile=tile)
    gx, ids = numpy_io(rt, run, gy, w)
    assert ids[0].startswith(BD.kernel_name(np.float32, tile, 0))
    assert not np.isnan(gx).any()
    exp, mag = _reference(case, gy, w)
    assert_close(gx, exp, mag, np.float32, what=f"{case} {tile.name}")


# --------------------------------------------------------------------------------------------
# public level (emulated)
# --------------------------------------------------------------------------------------------

def _on_emulator(fn, *args, reverse=False, **kwargs):
    with use_backend(CudaBackend(emulated_runtime(reverse_threads=reverse))):
        return fn(*args, **kwargs), gpuconv.last_kernel().kernels


@pytest.mark.emulated
@pytest.mark.parametrize("n", (0, 1, 3))
def test_conv2d_input_batches_and_record(n):
    xs, ws = (n, 4, 10, 9), (6, 2, 3, 2)
    rng = np.random.default_rng(n)
    w = rng.standard_normal(ws)
    g = conv_geometry(xs, ws, None, (3, 2), ((2, 0), (1, 1)), (2, 1), 2, True)
    gy = rng.standard_normal(g.output_shape)
    gx, kernels = _on_emulator(gpuconv.grad.conv2d_input, xs, w, gy, (3, 2), ((2, 0), (1, 1)), (2, 1), 2, flip=True)
    assert gx.shape == xs
    if n == 0:
        assert kernels == ("none (empty output)",)
        return
    assert kernels == (f"{BD.kernel_name(np.float64, BD.data_tile(g, np.float64, 10, 9), 0)} phases=6",)
    exp, _ = conv_nd_grads_ref(np.zeros(xs), w, gy, (3, 2), ((2, 0), (1, 1)), (2, 1), 2, True)
    np.testing.assert_allclose(gx, exp, rtol=1e-12, atol=1e-12)
    gx2, _ = _on_emulator(gpuconv.grad.conv2d_input, xs, w, gy, (3, 2), ((2, 0), (1, 1)), (2, 1), 2, flip=True,
                          reverse=True)
    assert gx.tobytes() == gx2.tobytes()


@pytest.mark.emulated
@pytest.mark.parametrize("dtype", (np.float16, np.float32), ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("stride, dilation, output_padding", [(2, 1, 1), (3, 2, (2, 1)), (2, 3, (2, 0))],
                         ids=["op1", "op2-dil2", "op-past-stride"])
def test_conv_transpose2d(dtype, stride, dilation, output_padding):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 5, 6, 7)).astype(dtype)
    w = (rng.standard_normal((5, 3, 3, 2)) / 3).astype(dtype)
    b = rng.standard_normal(3).astype(dtype)
    y, kernels = _on_emulator(gpuconv.conv_transpose2d, x, w, b, stride, 1, output_padding, 1, dilation)
    assert len(kernels) == 1 and kernels[0].startswith(f"gpuconv::conv2d_backward_data<{BD.CTYPE[np.dtype(dtype)]}")
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    exp = gpuconv.conv_transpose2d(x64, w64, b.astype(np.float64), stride, 1, output_padding, 1, dilation)
    mag = gpuconv.conv_transpose2d(np.abs(x64), np.abs(w64), np.abs(b.astype(np.float64)), stride, 1, output_padding,
                                   1, dilation)
    assert_close(y, exp, mag, dtype, what="conv_transpose2d")
    if torch is not None:
        t = torch.nn.functional.conv_transpose2d(torch.tensor(x64), torch.tensor(w64), torch.tensor(b.astype(np.float64)),
                                                 stride, 1, output_padding, 1, dilation).numpy()
        assert_close(y, t, mag, dtype, what="conv_transpose2d vs PyTorch")


@pytest.mark.emulated
def test_more_than_64_phases_take_two_launches():
    xs, ws, stride = (1, 2, 20, 19), (3, 2, 2, 3), (9, 8)
    rng = np.random.default_rng(3)
    w, g = rng.standard_normal(ws), conv_geometry(xs, ws, None, stride, 1)
    gy = rng.standard_normal(g.output_shape)
    gx, kernels = _on_emulator(gpuconv.grad.conv2d_input, xs, w, gy, stride, 1)
    name = BD.kernel_name(np.float64, BD.data_tile(g, np.float64, 20, 19), 0)
    assert kernels == (f"{name} phases=64", f"{name} phases=8")
    exp, _ = conv_nd_grads_ref(np.zeros(xs), w, gy, stride, ((1, 1), (1, 1)), (1, 1), 1, False)
    np.testing.assert_allclose(gx, exp, rtol=1e-12, atol=1e-12)


@pytest.mark.emulated
def test_conv2d_backward_without_activation_runs_one_data_launch():
    rng = np.random.default_rng(4)
    x, w = rng.standard_normal((2, 4, 9, 8)).astype(np.float32), rng.standard_normal((6, 2, 3, 3)).astype(np.float32)
    gy = rng.standard_normal((2, 6, 5, 4)).astype(np.float32)
    (gx, gw, gb), kernels = _on_emulator(gpuconv.conv2d_backward, gy, x, w, 2, 1, 1, 2)
    assert kernels[0].startswith("gpuconv::conv2d_backward_data<float") and kernels[0].endswith("phases=4")
    assert not any("conv2d_backward_data" in k for k in kernels[1:])
    exp, _ = conv_nd_grads_ref(x, w, gy, (2, 2), ((1, 1), (1, 1)), (1, 1), 2, False)
    np.testing.assert_allclose(gx, exp, rtol=2e-5, atol=2e-5)


@pytest.mark.emulated
def test_declined_geometry_runs_the_lowering_and_says_why(monkeypatch):
    monkeypatch.setattr(BD, "decline_reason", lambda geom, dtype: "the backward-data kernel declines (forced)")
    rng = np.random.default_rng(5)
    xs, ws = (1, 3, 9, 8), (4, 3, 3, 2)
    w = rng.standard_normal(ws)
    gy = rng.standard_normal(conv_geometry(xs, ws, None, 2, 1).output_shape)
    gx, kernels = _on_emulator(gpuconv.grad.conv2d_input, xs, w, gy, 2, 1)
    assert kernels[0] == "conv2d backward-data phase lowering (the backward-data kernel declines (forced))"
    assert len(kernels) == 5 and not any("conv2d_backward_data<" in k for k in kernels)
    exp, _ = conv_nd_grads_ref(np.zeros(xs), w, gy, (2, 2), ((1, 1), (1, 1)), (1, 1), 1, False)
    np.testing.assert_allclose(gx, exp, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="out given"):
        L.backward_data(CudaBackend(emulated_runtime()), gy, w, conv_geometry(xs, ws, None, 2, 1, activation="relu"),
                        9, 8, out=gy)


# --------------------------------------------------------------------------------------------
# host rules
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", list(CASES))
def test_plan_matches_the_lowering(case):
    """The kernel's phases are the lowering's (same taps, same rows of gx), plus the phases the lowering
    leaves to the zero fill, which carry no taps or read only padding."""
    g = _geometry(case)
    Pg, Qg = g.output_shape[2:]
    for size, n, k, s, p, d, plan in ((g.H, Pg, g.R, g.sh, g.pt, g.dh, BD.axis_plan(g.H, Pg, g.R, g.sh, g.pt, g.dh)),
                                      (g.W, Qg, g.S, g.sw, g.pl, g.dw, BD.axis_plan(g.W, Qg, g.S, g.sw, g.pl, g.dw))):
        assert [a for a, *_ in plan] == list(range(min(s, size)))
        low = {a: (taps, lo - start) for a, taps, _, lo, _, start, _ in L.axis_phases(size, n, k, s, p, d)}
        for a, taps, pad, count in plan:
            assert count == len(range(a, size, s))
            if a in low:
                assert (taps, pad) == low[a]
    phases = BD.plan(g, g.H, g.W, Pg, Qg)
    w = np.arange(np.prod(g.weight_shape), dtype=np.float64).reshape(g.weight_shape)  # each tap its own value
    wp, offsets = BD.pack_weights(np, w, g, phases)
    assert wp.size <= w.size and len(set(wp.tolist())) == wp.size and offsets[0] == 0
    we = w[:, :, ::-1, ::-1] if g.flip else w
    for (_, _, rtaps, ctaps, *_), off in zip(phases, offsets):  # phase by phase (C, Kg, J, Jc)
        if rtaps and ctaps:
            block = wp[off:off + g.C * g.Kg * len(rtaps) * len(ctaps)].reshape(g.C, g.Kg, len(rtaps), len(ctaps))
            for c in range(g.C):
                gr, cc = divmod(c, g.Cg)
                exp = we[gr * g.Kg:(gr + 1) * g.Kg, cc][:, rtaps][:, :, ctaps]
                np.testing.assert_array_equal(block[c], exp)


def test_tapless_phases_exist_in_the_matrix():
    """The matrix above has phases no tap reaches (stride > kernel, and dilation sharing a factor with the
    stride) and phases that read only gy positions past its end (negative padding)."""
    tapless = {c for c in CASES if any(not rt_ or not ct for _, _, rt_, ct, *_ in
                                       BD.plan(_geometry(c), _geometry(c).H, _geometry(c).W,
                                               *_geometry(c).output_shape[2:]))}
    assert {"s3-kernel2", "s2-asym-dil2-groups", "s4x3-dil6x2-flip"} <= tapless
    assert any(p < 0 for c in CASES for *_, p, _ in BD.axis_plan(_geometry(c).H, _geometry(c).output_shape[2],
                                                                  _geometry(c).R, _geometry(c).sh, _geometry(c).pt,
                                                                  _geometry(c).dh))


def test_parameter_block_and_instantiations():
    assert BD.DGRAD_PARAMS_DTYPE.itemsize == 2648  # sizeof(DgradParams): the kernel's static_assert agrees
    assert BD.DGRAD_PARAMS_DTYPE.fields["ph"][1] == 88 and BD.PHASE_DTYPE.names == BD.PHASE_FIELDS
    # 5 activation codes x (wide, small) for float16 / float32, small for float64
    assert len(BD.INSTANTIATIONS) == 25
    from gpuconv._cuda.ops import INSTANTIATIONS, operation
    assert set(BD.INSTANTIATIONS) == {n for n in INSTANTIATIONS[BD.SOURCE] if n.startswith(f"gpuconv::{BD.KERNEL}<")}
    assert operation("conv2d", "backward_data").names == ("igemm",)
    assert BD.kernel_name(np.float32, SMALL_TILE, 3) == "gpuconv::conv2d_backward_data<float, 64, 64, 16, 8, 8, 3>"
    assert not any("conv2d_igemm_dgrad" in n for names in INSTANTIATIONS.values() for n in names)


def test_tile_rule():
    big = conv_geometry((8, 256, 56, 56), (256, 256, 3, 3), None, 1, 1)
    assert BD.data_tile(big, np.float32, 56, 56) == WIDE_TILE  # gemm_tile_for says large
    assert BD.data_tile(big, np.float64, 56, 56) == TILES_BY_DTYPE[np.dtype(np.float64)][0]
    small = conv_geometry((1, 3, 9, 9), (4, 3, 3, 3), None, 2, 1)
    assert BD.data_tile(small, np.float16, 9, 9) == SMALL_TILE
    with pytest.raises(ValueError, match="not instantiated"):
        BD.launch(emulated_runtime(), np.zeros((1, 4, 5, 5), np.float32), np.zeros((4, 3, 3, 3), np.float32), None,
                  small, 9, 9, tile=LARGE_TILE)


def test_32_bit_rule():
    assert BD.decline_reason(conv_geometry((1, 2, 9, 9), (3, 2, 3, 3), None, 2, 1), np.float32) is None
    huge = conv_geometry((1, 1, 50000, 50000), (1, 1, 1, 1), None, 1, 0)
    assert "H * W = 2500000000 exceeds 2^31-1" in BD.decline_reason(huge, np.float32)
    assert BD.decline_reason(huge, np.float32).startswith("the backward-data kernel declines this geometry")
