"""``gpuconv.dask`` pooling beyond the forward values (issue 19): ``max_pool{1,2,3}d(..., return_indices=True)``
and the pooling gradients ``{max,avg}_pool{1,2,3}d_input``, against the single-array calls (bitwise: values,
indices, NaN and all--inf windows included; the gradients reproduce the single call's summation order) and,
for the gradients, against PyTorch's autograd (tests/tolerance.py's "pool" model) when installed; random
geometries (per-side padding, ceil mode, dilation, count_include_pad, divisor_override) and random chunkings
(chunks smaller than the halo, uneven last chunks)."""

from __future__ import annotations

import numpy as np
import pytest

da = pytest.importorskip("dask.array")

import gpuconv  # noqa: E402
import gpuconv.dask as gd  # noqa: E402
import gpuconv.grad as gg  # noqa: E402

DTYPES = (np.float32, np.float64, np.float16)


def random_chunks(rng, size):
    """Single pixels and pairs (smaller than any halo here) a third of the time, else random cuts."""
    if size <= 1:
        return (size,)
    if rng.integers(3) == 0:
        out, left = [], size
        while left:
            out.append(min(left, int(rng.integers(1, 3))))
            left -= out[-1]
        return tuple(out)
    cuts = [0] + sorted(set(rng.integers(1, size, size=int(rng.integers(0, 4))).tolist())) + [size]
    return tuple(b - a for a, b in zip(cuts, cuts[1:]))


def chunked(rng, x):
    return da.from_array(x, chunks=tuple(random_chunks(rng, n) for n in x.shape))


def case(rng, nd, op):
    dtype = DTYPES[int(rng.integers(len(DTYPES)))]
    k = tuple(int(v) for v in rng.integers(1, 5 if nd == 1 else 4, size=nd))
    stride = tuple(int(v) for v in rng.integers(1, 4, size=nd))
    dil = tuple(int(v) for v in rng.integers(1, 3, size=nd)) if op == "max" else (1,) * nd
    if rng.integers(2):  # per-side padding
        pad = tuple((int(rng.integers(0, kk // 2 + 1)), int(rng.integers(0, kk // 2 + 1))) for kk in k)
    else:
        pad = tuple(int(rng.integers(0, kk // 2 + 1)) for kk in k)
    hi = 30 if nd == 1 else (12 if nd == 2 else 8)
    size = tuple(int(rng.integers((kk - 1) * d + 1, max((kk - 1) * d + 2, hi))) for kk, d in zip(k, dil))
    x = rng.standard_normal((int(rng.integers(1, 3)), int(rng.integers(1, 4))) + size).astype(dtype)
    if rng.integers(2):  # a NaN, and a corner of -inf (windows whose every real cell is -inf)
        x[(0, 0) + tuple(int(rng.integers(n)) for n in size)] = np.nan
        x[(slice(None), slice(None)) + tuple(slice(0, 3) for _ in size)] = -np.inf
    return x, k, stride, pad, dil, bool(rng.integers(2))


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("seed", range(10))
def test_max_pool_return_indices_equals_single_call(nd, seed):
    rng = np.random.default_rng(19000 + 100 * nd + seed)
    x, k, s, p, d, ceil = case(rng, nd, "max")
    xd = chunked(rng, x)
    y, idx = getattr(gd, f"max_pool{nd}d")(xd, k, s, p, d, ceil, return_indices=True)
    assert isinstance(y, da.Array) and isinstance(idx, da.Array) and idx.dtype == np.int64
    y0, i0 = getattr(gpuconv, f"max_pool{nd}d")(x, k, s, p, d, ceil, return_indices=True)
    assert y.shape == y0.shape and idx.shape == i0.shape
    yc, ic = y.compute(scheduler="threads"), idx.compute(scheduler="sync")
    np.testing.assert_array_equal(yc, y0)  # NaN at the same places
    np.testing.assert_array_equal(ic, i0)
    # unbatched input: the pair unbatched too
    yu, iu = getattr(gd, f"max_pool{nd}d")(xd[0], k, s, p, d, ceil, return_indices=True)
    np.testing.assert_array_equal(iu.compute(), i0[0])
    np.testing.assert_array_equal(yu.compute(), y0[0])


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("seed", range(10))
def test_max_pool_input_equals_single_call(nd, seed):
    rng = np.random.default_rng(19500 + 100 * nd + seed)
    x, k, s, p, d, ceil = case(rng, nd, "max")
    y0, i0 = getattr(gpuconv, f"max_pool{nd}d")(x, k, s, p, d, ceil, return_indices=True)
    go = rng.standard_normal(y0.shape).astype(x.dtype)
    gdn = chunked(rng, go)
    # the indices as the dask forward gives them (chunked as its output), and as an independently chunked array
    _, idx = getattr(gd, f"max_pool{nd}d")(chunked(rng, x), k, s, p, d, ceil, return_indices=True)
    expected = getattr(gg, f"max_pool{nd}d_input")(x.shape, go, i0, k, s, p, d, ceil)
    for ind in (idx, chunked(rng, i0)):
        chunks = tuple(random_chunks(rng, n) for n in x.shape[2:]) if rng.integers(2) else None
        g = getattr(gd, f"max_pool{nd}d_input")(x.shape, gdn, ind, k, s, p, d, ceil, chunks=chunks)
        assert g.shape == x.shape and g.dtype == x.dtype
        if chunks is not None:
            assert g.chunks[2:] == chunks
        np.testing.assert_array_equal(g.compute(scheduler="threads"), expected)


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("seed", range(10))
def test_avg_pool_input_equals_single_call(nd, seed):
    rng = np.random.default_rng(19700 + 100 * nd + seed)
    x, k, s, p, _, ceil = case(rng, nd, "avg")
    cip = bool(rng.integers(2))
    kw = {"count_include_pad": cip}
    if nd > 1 and rng.integers(3) == 0:
        kw["divisor_override"] = int(rng.integers(1, 7))
    y0 = getattr(gpuconv, f"avg_pool{nd}d")(x, k, s, p, ceil_mode=ceil, **kw)
    go = rng.standard_normal(y0.shape).astype(x.dtype)
    chunks = tuple(random_chunks(rng, n) for n in x.shape[2:]) if rng.integers(2) else None
    g = getattr(gd, f"avg_pool{nd}d_input")(x.shape, chunked(rng, go), k, s, p, ceil, chunks=chunks, **kw)
    assert g.shape == x.shape and g.dtype == x.dtype
    expected = getattr(gg, f"avg_pool{nd}d_input")(x.shape, go, k, s, p, ceil, **kw)
    gc = g.compute(scheduler="threads")
    np.testing.assert_array_equal(gc, expected)  # the single call's divisions and summation order
    torch = pytest.importorskip("torch")
    if any(isinstance(q, tuple) for q in p):
        return  # torch has no per-side pooling padding
    xt = torch.tensor(x.astype(np.float64), requires_grad=True)
    yt = getattr(torch.nn.functional, f"avg_pool{nd}d")(xt, k, s, p, ceil, cip, *(
        [kw["divisor_override"]] if "divisor_override" in kw else []))
    yt.backward(torch.tensor(go.astype(np.float64)))
    ref = xt.grad.numpy()
    rel = {np.float16: 1e-3, np.float32: 1e-6, np.float64: 1e-13}[x.dtype.type]  # tests/tolerance.py "pool"
    mag = getattr(gg, f"avg_pool{nd}d_input")(x.shape, np.abs(go).astype(np.float64), k, s, p, ceil, **kw)
    assert np.all(np.abs(gc.astype(np.float64) - ref) <= rel * np.maximum(mag, np.abs(ref)))


def test_unbatched_and_errors():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 7, 6)).astype(np.float32)
    y0, i0 = gpuconv.max_pool2d(x, 3, 2, 1, return_indices=True)
    go = rng.standard_normal(y0.shape).astype(np.float32)
    g = gd.max_pool2d_input(x.shape, da.from_array(go, chunks=(1, 2, 2)), da.from_array(i0, chunks=(2, 1, 3)),
                            3, 2, 1)
    np.testing.assert_array_equal(g.compute(), gg.max_pool2d_input(x.shape, go, i0, 3, 2, 1))
    ga = gd.avg_pool2d_input(x.shape, da.from_array(go, chunks=(1, 2, 2)), 3, 2, 1, count_include_pad=False)
    np.testing.assert_array_equal(ga.compute(), gg.avg_pool2d_input(x.shape, go, 3, 2, 1, count_include_pad=False))
    with pytest.raises(TypeError, match="grad_output"):
        gd.avg_pool2d_input(x.shape, go, 3, 2, 1)
    with pytest.raises(ValueError, match="grad_output has shape"):
        gd.avg_pool2d_input((2, 9, 6), da.from_array(go), 3, 2, 1)
    with pytest.raises(ValueError, match="indices"):
        gd.max_pool2d_input(x.shape, da.from_array(go), da.from_array(i0.astype(np.int32)), 3, 2, 1)
    with pytest.raises(ValueError, match="indices are required"):
        gd.max_pool2d_input(x.shape, da.from_array(go), None, 3, 2, 1)
    with pytest.raises(ValueError, match="chunks"):
        gd.avg_pool2d_input(x.shape, da.from_array(go), 3, 2, 1, chunks=((3, 3), (6,)))
    with pytest.raises(TypeError, match="input_size"):
        gd.avg_pool2d_input("x", da.from_array(go), 3, 2, 1)


def test_forward_indices_and_gradients_on_a_local_cluster():
    """The pair tasks, the indices' window tasks and the gradients through worker processes (pickled)."""
    distributed = pytest.importorskip("distributed")
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 3, 13, 11)).astype(np.float32)
    x[:, :, :3, :3] = -np.inf
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  memory_limit="2GiB") as cluster, distributed.Client(cluster) as c:
        y, idx = gd.max_pool2d(da.from_array(x, chunks=(1, 2, 4, 3)), 3, 2, ((1, 0), (1, 1)), 1, True,
                               return_indices=True)
        y0, i0 = gpuconv.max_pool2d(x, 3, 2, ((1, 0), (1, 1)), 1, True, return_indices=True)
        got_y, got_i = c.compute([y, idx], sync=True)
        np.testing.assert_array_equal(got_y, y0)
        np.testing.assert_array_equal(got_i, i0)
        go = rng.standard_normal(y0.shape).astype(np.float32)
        gdn = da.from_array(go, chunks=(1, 3, 2, 3))
        g = c.compute(gd.max_pool2d_input(x.shape, gdn, idx, 3, 2, ((1, 0), (1, 1)), 1, True), sync=True)
        np.testing.assert_array_equal(g, gg.max_pool2d_input(x.shape, go, i0, 3, 2, ((1, 0), (1, 1)), 1, True))
        g = c.compute(gd.avg_pool2d_input(x.shape, gdn, 3, 2, ((1, 0), (1, 1)), True, False), sync=True)
        np.testing.assert_array_equal(g, gg.avg_pool2d_input(x.shape, go, 3, 2, ((1, 0), (1, 1)), True, False))
