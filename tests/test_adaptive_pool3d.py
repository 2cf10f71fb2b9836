"""Adaptive 3-D pooling and its gradients (gpuconv.adaptive_avg_pool3d / adaptive_max_pool3d,
gpuconv.grad.adaptive_*_pool3d_input) on every backend: NumPy, the emulated CUDA kernels in both thread orders,
a GPU; against a textbook loop written here from the definition (window ``[floor(i*n/o), ceil((i+1)*n/o))``
per axis; max: first maximum / last NaN in (depth, row, column) order) and against PyTorch's
``F.adaptive_*_pool3d`` and autograd when installed. The kernels are the 2-D ones' family
(``adaptive_*_pool<..., DIMS>``): their determinism, names and 2-D instantiation are checked too."""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest

import gpuconv
from gpuconv import grad as gp
from gpuconv._backend import CudaBackend, use_backend
from tests.cases import pairwise
from tests.runners import Runner, emulated_runtime, numpy_io, runtime_fixture, torch, with_thread_order
from tests.tolerance import assert_close

rt = runtime_fixture()


class ReversedRunner(Runner):
    """The emulated kernels with each block's threads started in reverse order."""

    def call(self, fn, *arrays, **kwargs):
        with use_backend(CudaBackend(emulated_runtime(reverse_threads=True))):
            return fn(*arrays, **kwargs)


# A GPU has no reversed order (tests/runners.py, with_thread_order): its "reversed" case is one more run on
# the hardware's own order, so that -m gpu collects as many cases as -m emulated (tests/test_runner_parity.py).
RUNNERS = [pytest.param(Runner("numpy"), id="numpy"),
           pytest.param(Runner("emulated"), id="emulated", marks=pytest.mark.emulated),
           pytest.param(ReversedRunner("emulated"), id="emulated-reversed", marks=pytest.mark.emulated),
           pytest.param(Runner("gpu"), id="gpu", marks=pytest.mark.gpu),
           pytest.param(Runner("gpu"), id="gpu-reversed", marks=pytest.mark.gpu)]


# --------------------------------------------------------------------------------------------
# the textbook loop (float64), independent of gpuconv
# --------------------------------------------------------------------------------------------

def _window(i, n, o):
    return math.floor(i * n / o), math.ceil((i + 1) * n / o)


def _windows(spatial, out):
    """Yield (output position, cells of its window in (d, h, w) order)."""
    D, H, W = spatial
    for od in range(out[0]):
        for oh in range(out[1]):
            for ow in range(out[2]):
                (d0, d1), (h0, h1), (w0, w1) = _window(od, D, out[0]), _window(oh, H, out[1]), _window(ow, W, out[2])
                yield (od, oh, ow), [(d, h, w) for d in range(d0, d1) for h in range(h0, h1) for w in range(w0, w1)]


def ref_forward(x, out):
    """(avg, max, argmax) of x (N, C, D, H, W) in float64."""
    N, C, *spatial = x.shape
    avg, mx, arg = np.zeros((N, C, *out)), np.zeros((N, C, *out)), np.zeros((N, C, *out), np.int64)
    for o, cells in _windows(spatial, out):
        for n in range(N):
            for c in range(C):
                vals = [float(x[(n, c) + t]) for t in cells]
                avg[(n, c) + o] = sum(vals) / len(vals)
                best, at = -math.inf, cells[0]
                for v, t in zip(vals, cells):
                    if v > best or math.isnan(v):
                        best, at = v, t
                mx[(n, c) + o] = best
                arg[(n, c) + o] = (at[0] * spatial[1] + at[1]) * spatial[2] + at[2]
    return avg, mx, arg


def ref_grads(shape, go, idx):
    """(avg gradient, max gradient): go / window size over each window; go added at each recorded index."""
    N, C, *spatial = shape
    out = go.shape[2:]
    ga, gm = np.zeros(shape), np.zeros(shape)
    go = go.astype(np.float64)
    for o, cells in _windows(spatial, out):
        for t in cells:
            ga[(slice(None), slice(None)) + t] += go[(slice(None), slice(None)) + o] / len(cells)
    for n in range(N):
        for c in range(C):
            for o in np.ndindex(*out):
                gm[n, c].reshape(-1)[idx[(n, c) + o]] += go[(n, c) + o]
    return ga, gm


# --------------------------------------------------------------------------------------------
# the matrix
# --------------------------------------------------------------------------------------------

DIMS = {
    "sizes": [((7, 5, 6), (3, 4, 2)),          # not dividing: 7 -> 3, 5 -> 4
              ((5, 4, 3), (4, 9, 5)),          # output bigger than the input
              ((4, 6, 8), (2, None, 4)),       # None keeps the size; dividing
              ((6, 4, 5), 1),                  # global
              ((3, 7, 2), (None, 3, None)),
              ((9, 1, 4), (2, 1, 3))],
    "dtype": ["float16", "float32", "float64"],
    "data": ["normal", "nan", "ties"],
    "batch": ["N=0", "N=2", "unbatched"],
    "layout": ["contiguous", "sliced", "transposed"],
}
CASES = pairwise(DIMS, seed=18)


def _out(spatial, output_size):
    if isinstance(output_size, int):
        return (output_size,) * 3
    return tuple(n if o is None else o for n, o in zip(spatial, output_size))


def _data(c):
    spatial, _ = c["sizes"]
    rng = np.random.default_rng(len(str(c)))
    n = {"N=0": (0,), "N=2": (2,), "unbatched": ()}[c["batch"]]
    shape = n + (3,) + spatial
    x = rng.integers(-2, 3, shape).astype(np.float64) if c["data"] == "ties" else rng.standard_normal(shape)
    if c["data"] == "nan":
        x[rng.random(shape) < 0.15] = np.nan
    x = x.astype(c["dtype"])
    if c["layout"] == "sliced":
        big = np.zeros(x.shape[:-1] + (2 * x.shape[-1],), x.dtype)
        big[..., ::2] = x
        return x, big[..., ::2]
    if c["layout"] == "transposed":  # the same values, D and W swapped in memory
        return x, np.ascontiguousarray(x.swapaxes(-1, -3)).swapaxes(-1, -3)
    return x, x


def _cid(c):
    return "-".join(str(v) for v in c.values()).replace(" ", "")


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("c", CASES, ids=[_cid(c) for c in CASES])
def test_adaptive_pool3d(runner, c):
    spatial, output_size = c["sizes"]
    out = _out(spatial, output_size)
    x, view = _data(c)
    assert x.size == 0 or not view.flags.c_contiguous or c["layout"] == "contiguous"
    xb = x if c["batch"] != "unbatched" else x[None]
    batch = (lambda a: a[None]) if c["batch"] == "unbatched" else (lambda a: a)
    exp_avg, exp_max, exp_idx = ref_forward(xb, out)
    # max: values and indices exact
    y, idx = runner.call(lambda a: gpuconv.adaptive_max_pool3d(a, output_size, return_indices=True), view)
    assert y.shape == x.shape[:-3] + out and y.dtype == x.dtype and idx.dtype == np.int64
    np.testing.assert_array_equal(batch(y).astype(np.float64), exp_max)
    np.testing.assert_array_equal(batch(idx), exp_idx)
    y2 = runner.call(lambda a: gpuconv.adaptive_max_pool3d(a, output_size), view)
    np.testing.assert_array_equal(y2, y)
    # average
    ya = runner.call(lambda a: gpuconv.adaptive_avg_pool3d(a, output_size), view)
    assert ya.shape == y.shape and ya.dtype == x.dtype
    mag = ref_forward(np.abs(xb.astype(np.float64)), out)[0]
    assert_close(batch(ya), exp_avg, mag, x.dtype, "adaptive avg 3-D", precision="pool")
    rec = gpuconv.last_kernel()
    assert (rec.op, rec.direction) == ("adaptive_avg_pool3d", "forward")
    if c["batch"] != "N=0" and runner.kind != "numpy":
        assert rec.kernel == f"gpuconv::adaptive_avg_pool<{_ctype(x.dtype)}, 3>"
    # gradients, grad_output through a non-contiguous view too
    rng = np.random.default_rng(7)
    go = rng.standard_normal(y.shape).astype(c["dtype"])
    go_view = go if c["layout"] == "contiguous" else np.ascontiguousarray(go.swapaxes(-1, -2)).swapaxes(-1, -2)
    ref_ga, ref_gm = ref_grads(xb.shape, batch(go), batch(idx))
    mag_a, mag_m = ref_grads(xb.shape, np.abs(batch(go).astype(np.float64)), batch(idx))
    ga = runner.call(lambda g: gp.adaptive_avg_pool3d_input(x.shape, g), go_view)
    assert ga.shape == x.shape and ga.dtype == x.dtype
    assert_close(batch(ga), ref_ga, mag_a, x.dtype, "adaptive avg 3-D gradient", precision="pool")
    gm = runner.call(lambda g, i: gp.adaptive_max_pool3d_input(x.shape, g, i), go_view, idx)
    assert gm.shape == x.shape and gm.dtype == x.dtype
    assert_close(batch(gm), ref_gm, mag_m, x.dtype, "adaptive max 3-D gradient")
    rec = gpuconv.last_kernel()
    assert (rec.op, rec.direction) == ("adaptive_max_pool3d", "backward")
    if c["batch"] != "N=0" and runner.kind != "numpy":
        assert rec.kernel == f"gpuconv::adaptive_max_pool_backward<{_ctype(x.dtype)}, 3>"
    if torch is not None:
        t = torch.tensor(xb.astype(np.float64), requires_grad=True)
        F = torch.nn.functional
        ty, ti = F.adaptive_max_pool3d(t, output_size, return_indices=True)
        np.testing.assert_array_equal(batch(idx), ti.numpy())
        ty.backward(torch.tensor(batch(go).astype(np.float64)))
        assert_close(batch(gm), t.grad.numpy(), mag_m, x.dtype, "adaptive max 3-D gradient vs autograd")
        t.grad = None
        F.adaptive_avg_pool3d(t, output_size).backward(torch.tensor(batch(go).astype(np.float64)))
        assert_close(batch(ga), t.grad.numpy(), mag_a, x.dtype, "adaptive avg 3-D gradient vs autograd",
                     precision="pool")


def _ctype(dtype):
    return {"float16": "gpuconv::half", "float32": "float", "float64": "double"}[np.dtype(dtype).name]


@pytest.mark.skipif(torch is None, reason="PyTorch is not installed")
@pytest.mark.parametrize("runner", RUNNERS)
def test_against_pytorch(runner):
    """Forward values and indices, and both gradients against autograd, in float64 (NaN included: PyTorch's
    rule is the last NaN in (depth, row, column) order)."""
    F = torch.nn.functional
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 7, 5, 11))
    x[0, 1, 3, 2, 4] = x[0, 1, 5, 1, 9] = np.nan
    for out in [(3, 4, 5), (2, None, 13), 1, (8, 6, 4)]:
        t = torch.tensor(x, requires_grad=True)
        y, idx = runner.call(lambda a: gpuconv.adaptive_max_pool3d(a, out, True), x)
        ty, ti = F.adaptive_max_pool3d(t, out, return_indices=True)
        np.testing.assert_array_equal(y, ty.detach().numpy())
        np.testing.assert_array_equal(idx, ti.numpy())
        go = rng.standard_normal(y.shape)
        ty.backward(torch.tensor(go))
        gm = runner.call(lambda g, i: gp.adaptive_max_pool3d_input(x.shape, g, i), go, ti.numpy())
        np.testing.assert_allclose(gm, t.grad.numpy(), rtol=1e-12, atol=1e-12)
        t.grad = None
        ya = runner.call(lambda a: gpuconv.adaptive_avg_pool3d(a, out), x)
        ta = F.adaptive_avg_pool3d(t, out)
        np.testing.assert_allclose(ya, ta.detach().numpy(), rtol=1e-12, atol=1e-12)
        ta.backward(torch.tensor(go))
        ga = runner.call(lambda g: gp.adaptive_avg_pool3d_input(x.shape, g), go)
        np.testing.assert_allclose(ga, t.grad.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("op", ["max", "avg"])
def test_kernels_are_deterministic(rt, op, monkeypatch):
    """The 3-D adaptive kernels (forward, gradient) give bitwise the same result in either thread order, with a
    capped grid (the grid-stride loop), twice; names from the table."""
    from gpuconv._cuda import limits, ops, pool, pool_grad
    from gpuconv._pool_geometry import adaptive_geometry_nd
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 3, 5, 6, 7)).astype(np.float32)
    g = adaptive_geometry_nd(x.shape, (3, 4, 9), "t", 3)
    go = rng.standard_normal(g.output_shape).astype(np.float32)
    results = []
    for r, cap in ((rt, None), (with_thread_order(rt, "reversed"), None), (rt, 2), (rt, None)):
        with monkeypatch.context() as m:
            if cap:
                m.setattr(limits, "MAX_GRID_BLOCKS", cap)
            if op == "max":
                y, idx, fwd = numpy_io(r, pool.adaptive_max_pool3d, x, g, True)
                gi, bwd = numpy_io(r, pool_grad.adaptive_max_pool3d, go, idx, g)
            else:
                y, fwd = numpy_io(r, pool.adaptive_avg_pool3d, x, g)
                gi, bwd = numpy_io(r, pool_grad.adaptive_avg_pool3d, go, None, g)
        results.append((y.tobytes(), gi.tobytes()))
    assert all(res == results[0] for res in results)
    assert fwd in ops.INSTANTIATIONS["pool2d.cu"] and bwd in ops.INSTANTIATIONS["pool2d_backward.cu"]
    assert fwd.startswith(f"gpuconv::adaptive_{op}_pool<") and fwd.endswith(", 3>")
    assert bwd == f"gpuconv::adaptive_{op}_pool_backward<float, 3>"


def test_one_kernel_family_for_2d_and_3d():
    """The 2-D adaptive ops run the same templates with DIMS = 2; both are in the compile list."""
    from gpuconv._cuda import ops, pool, pool_grad
    fwd, bwd = ops.INSTANTIATIONS["pool2d.cu"], ops.INSTANTIATIONS["pool2d_backward.cu"]
    for dims in (2, 3):
        for dt in (np.float16, np.float32, np.float64):
            assert pool.adaptive_avg_name(dt, dims) in fwd and pool_grad.adaptive_avg_name(dt, dims) in bwd
            assert pool_grad.adaptive_max_name(dt, dims) in bwd
            assert all(pool.adaptive_max_name(dt, wi, dims) in fwd for wi in (False, True))
    assert ops.operation("adaptive_max_pool3d").algorithms["direct"].source == "pool2d.cu"
    assert ops.operation("adaptive_avg_pool3d", "backward").algorithms["direct"].source == "pool2d_backward.cu"


@pytest.mark.parametrize("workspace_mb", ["0.001", "0.02"])
@pytest.mark.parametrize("dtype", ["float16", "float64"])
def test_numpy_blocks_match(monkeypatch, workspace_mb, dtype):
    """With a tiny workspace the NumPy path runs in small blocks (global max pooling in bands of depth) and
    gives bitwise the results of one block, NaN and indices included."""
    rng = np.random.default_rng(4)
    x = np.round(rng.standard_normal((2, 3, 9, 7, 10)) * 2).astype(dtype)
    x[rng.random(x.shape) < 0.05] = np.nan
    view = np.ascontiguousarray(x.swapaxes(2, 4)).swapaxes(2, 4)
    results = []
    for mb in (None, workspace_mb):
        if mb:
            monkeypatch.setenv("GPUCONV_NUMPY_WORKSPACE_MB", mb)
        res = []
        for out in [(4, 3, 6), (2, 7, 5), 1]:
            y, idx = gpuconv.adaptive_max_pool3d(view, out, True)
            ya = gpuconv.adaptive_avg_pool3d(view, out)
            go = np.linspace(-1, 1, y.size).reshape(y.shape).astype(dtype)
            res += [y, idx, ya, gp.adaptive_avg_pool3d_input(x.shape, go),
                    gp.adaptive_max_pool3d_input(x.shape, go, idx)]
        results.append([r.tobytes() for r in res])
    assert results[0] == results[1]


def test_numpy_memory_is_bounded(monkeypatch):
    """The NumPy path's temporaries stay within the workspace limit (+ small objects) on an input many times
    larger, max with indices on float16 through a non-contiguous view included."""
    from gpuconv._numpy import _workspace
    mib = 2**20
    monkeypatch.setenv("GPUCONV_NUMPY_WORKSPACE_MB", "1")
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 4, 40, 60, 90)).astype(np.float16)
    view = np.ascontiguousarray(x.swapaxes(3, 4)).swapaxes(3, 4)
    for call in (lambda: gpuconv.adaptive_max_pool3d(view, (7, 9, 11), True),
                 lambda: gpuconv.adaptive_avg_pool3d(view, (7, 9, 11)),
                 lambda: gpuconv.adaptive_max_pool3d(view, 1, True),
                 lambda: gp.adaptive_avg_pool3d_input(x.shape, np.ones((2, 4, 7, 9, 11), np.float16)),
                 lambda: gp.adaptive_max_pool3d_input(x.shape, np.ones((2, 4, 7, 9, 11), np.float16),
                                                      np.zeros((2, 4, 7, 9, 11), np.int64))):
        _workspace.trim_workspace(0)
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        out = call()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        held = sum(a.nbytes for a in (out if isinstance(out, tuple) else (out,)))
        assert peak - base - held <= 1 * mib + 2 * mib, (peak - base - held) / mib


def test_errors():
    x = np.zeros((1, 2, 4, 5, 6))
    with pytest.raises(ValueError, match=r"^adaptive_max_pool3d: Expected 4D or 5D input, but got input of size: "
                                         r"\[2, 3, 4\]"):
        gpuconv.adaptive_max_pool3d(np.zeros((2, 3, 4)), 2)
    with pytest.raises(ValueError, match=r"adaptive_avg_pool3d: Expected input's non-batch dimensions to have "
                                         r"positive length, but input has a shape of \[1, 2, 0, 4, 4\]"):
        gpuconv.adaptive_avg_pool3d(np.zeros((1, 2, 0, 4, 4)), 2)
    with pytest.raises(TypeError, match=r"adaptive_max_pool3d: output_size must be an int or a triple of ints "
                                        r"\(an entry None keeps that input size\), got \(2, 2\)"):
        gpuconv.adaptive_max_pool3d(x, (2, 2))
    for bad in ["a", None, (2, 1.5, 2), (2, True, 2), [2, 2, 2, 2]]:
        with pytest.raises(TypeError, match="output_size"):
            gpuconv.adaptive_avg_pool3d(x, bad)
    for bad in [0, -1, (2, None, 0)]:
        with pytest.raises(ValueError, match=r"adaptive_avg_pool3d: output_size must be positive"):
            gpuconv.adaptive_avg_pool3d(x, bad)
    with pytest.raises(TypeError, match=r"argument 'input' must be a NumPy or CuPy array, got list"):
        gpuconv.adaptive_avg_pool3d([1.0], 2)
    with pytest.raises(TypeError):
        gpuconv.adaptive_max_pool3d(np.zeros((1, 2, 4, 4, 4), np.int32), 2)
    with pytest.raises(ValueError, match=r"adaptive_avg_pool3d_input\(\): grad_output must have the shape of "
                                         r"input_size \[1, 2, 4, 5, 6\]"):
        gp.adaptive_avg_pool3d_input(x.shape, np.zeros((1, 3, 2, 2, 2)))
    with pytest.raises(ValueError, match=r"grad_output must have the shape"):
        gp.adaptive_avg_pool3d_input(x.shape, np.zeros((2, 2, 2, 2)))
    with pytest.raises(TypeError, match=r"adaptive_max_pool3d_input\(\): argument 'indices' must be"):
        gp.adaptive_max_pool3d_input(x.shape, np.zeros((1, 2, 2, 2, 2)), None)
    with pytest.raises(TypeError, match=r"indices must be int64"):
        gp.adaptive_max_pool3d_input(x.shape, np.zeros((1, 2, 2, 2, 2)), np.zeros((1, 2, 2, 2, 2), np.int32))
    with pytest.raises(ValueError, match=r"indices must have the shape of grad_output"):
        gp.adaptive_max_pool3d_input(x.shape, np.zeros((1, 2, 2, 2, 2)), np.zeros((1, 2, 2, 2, 3), np.int64))
    with pytest.raises(TypeError, match=r"input_size must be a tuple of 5 ints"):
        gp.adaptive_avg_pool3d_input("x", np.zeros((1, 2, 2, 2, 2)))
    with pytest.raises(ValueError, match=r"input_size must be a tuple of 5 ints"):
        gp.adaptive_avg_pool3d_input((2, 2, 2), np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match=r"Expected input's non-batch dimensions to have positive length"):
        gp.adaptive_avg_pool3d_input((1, 2, 0, 4, 4), np.zeros((1, 2, 2, 2, 2)))
    # N = 0 and unbatched shapes
    y, idx = gpuconv.adaptive_max_pool3d(np.zeros((0, 2, 4, 5, 6)), (2, None, 3), True)
    assert y.shape == idx.shape == (0, 2, 2, 5, 3)
    assert gp.adaptive_avg_pool3d_input((0, 2, 4, 5, 6), np.zeros((0, 2, 2, 5, 3))).shape == (0, 2, 4, 5, 6)
    assert gpuconv.adaptive_avg_pool3d(np.zeros((2, 4, 5, 6)), 3).shape == (2, 3, 3, 3)
