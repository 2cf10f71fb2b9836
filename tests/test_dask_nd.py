"""``gpuconv.dask`` in 1 and 3 spatial dimensions (conv1d/3d, max/avg_pool1d/3d) and the convolutions'
gradients (conv{1,2,3}d_input / _weight / _bias) against the single-array calls and the references
of tests/reference.py, on random geometries and random chunkings (chunks smaller than the halo, uneven last
chunks); a few cases on a ``distributed.LocalCluster``."""

from __future__ import annotations

import numpy as np
import pytest

da = pytest.importorskip("dask.array")

import gpuconv  # noqa: E402
import gpuconv.dask as gd  # noqa: E402
import gpuconv.grad as gg  # noqa: E402
from tests.reference import (avg_pool_nd_ref, conv_nd_grads_ref, explicit_padding_nd, max_pool_nd_ref,  # noqa: E402
                             pool_pads_ref, reference_conv_nd)
from tests.test_dask import chunked, random_chunks  # noqa: E402
from tests.tolerance import assert_close  # noqa: E402

DTYPES = (np.float32, np.float64, np.float16)


def ints(rng, lo, hi, n):
    return tuple(int(v) for v in rng.integers(lo, hi, size=n))


def conv_case(rng, nd):
    dtype = DTYPES[int(rng.integers(len(DTYPES)))]
    groups = int(rng.choice([1, 1, 2]))
    C, K = groups * int(rng.integers(1, 3)), groups * int(rng.integers(1, 3))
    k = ints(rng, 1, 5 if nd == 1 else 4, nd)
    stride, dilation = ints(rng, 1, 4, nd), ints(rng, 1, 3, nd)
    padding = [0, "valid", "same", ints(rng, 0, 3, nd),
               tuple(ints(rng, 0, 3, 2) for _ in range(nd))][int(rng.integers(5))]
    hi = 30 if nd == 1 else 10
    size = tuple(int(rng.integers((kk - 1) * d + 1, max((kk - 1) * d + 2, hi))) for kk, d in zip(k, dilation))
    x = rng.standard_normal((int(rng.integers(1, 3)), C) + size).astype(dtype)
    w = rng.standard_normal((K, C // groups) + k).astype(dtype)
    b = rng.standard_normal(K).astype(dtype) if rng.integers(2) else None
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, flip=bool(rng.integers(2)),
              activation=[None, "relu", "tanh"][int(rng.integers(3))])
    return x, w, b, kw


def check_conv_nd(nd, x, w, b, kw, y):
    expected, magnitude = reference_conv_nd(x, w, b, **kw)
    single = getattr(gpuconv, f"conv{nd}d")(x, w, b, **kw)
    assert y.shape == single.shape and y.dtype == single.dtype
    assert_close(y, expected, magnitude, x.dtype, what=f"dask conv{nd}d vs reference {kw}")
    assert_close(y, single, magnitude, x.dtype, what=f"dask conv{nd}d vs single call {kw}")


@pytest.mark.parametrize("nd", [1, 3])
@pytest.mark.parametrize("seed", range(10))
def test_conv_nd_random_geometry_and_chunking(nd, seed):
    rng = np.random.default_rng(100 * nd + seed)
    x, w, b, kw = conv_case(rng, nd)
    X = chunked(rng, x, small=seed % 3 == 0)
    y = getattr(gd, f"conv{nd}d")(X, w, b, **kw)
    assert isinstance(y, da.Array) and y.ndim == nd + 2 and y.chunks[1] == (w.shape[0],)
    assert all(min(c) > 0 for c in y.chunks)
    check_conv_nd(nd, x, w, b, kw, y.compute(scheduler="threads"))


def test_conv_nd_unbatched_and_errors():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 17)).astype(np.float32)[:, ::-1]  # CL, not contiguous
    w = rng.standard_normal((3, 2, 4)).astype(np.float32)
    y = gd.conv1d(da.from_array(x, chunks=(1, 2)), w, padding=((5, 2),), stride=2)
    assert y.ndim == 2
    check_conv_nd(1, x[None], w, None, dict(padding=((5, 2),), stride=2), y.compute()[None])
    with pytest.raises(ValueError, match="2-D .* or 3-D"):
        gd.conv1d(da.zeros((1, 1, 4, 4), chunks=2), np.ones((1, 1, 3)))
    with pytest.raises(ValueError, match="4-D .* or 5-D"):
        gd.conv3d(da.zeros((1, 4, 4), chunks=2), np.ones((1, 1, 3, 3, 3)))
    with pytest.raises(TypeError, match="same dtype"):
        gd.conv3d(da.zeros((1, 1, 4, 4, 4), chunks=2, dtype=np.float32), np.ones((1, 1, 3, 3, 3)))
    assert len(gd.max_pool3d(da.zeros((1, 1, 4, 4, 4), chunks=2), 2, return_indices=True)) == 2  # issue 19
    with pytest.raises(ValueError, match="divisor must be not zero"):
        gd.avg_pool3d(da.zeros((1, 1, 4, 4, 4), chunks=2), 2, divisor_override=0)


def pool_case(rng, nd, op):
    dtype = DTYPES[int(rng.integers(len(DTYPES)))]
    k = ints(rng, 1, 5 if nd == 1 else 4, nd)
    stride = ints(rng, 1, 4, nd)
    dil = ints(rng, 1, 3, nd) if op == "max" else (1,) * nd
    pad = tuple(int(rng.integers(0, kk // 2 + 1)) for kk in k)
    hi = 30 if nd == 1 else 9
    size = tuple(int(rng.integers((kk - 1) * d + 1, max((kk - 1) * d + 2, hi))) for kk, d in zip(k, dil))
    x = rng.standard_normal((int(rng.integers(1, 3)), int(rng.integers(1, 4))) + size).astype(dtype)
    if rng.integers(2):
        x[(0, 0) + tuple(int(rng.integers(n)) for n in size)] = np.nan
    return x, k, stride, pad, dil, bool(rng.integers(2))


@pytest.mark.parametrize("nd", [1, 3])
@pytest.mark.parametrize("seed", range(8))
def test_max_pool_nd_random_geometry_and_chunking(nd, seed):
    rng = np.random.default_rng(1000 + 100 * nd + seed)
    x, k, s, p, d, ceil = pool_case(rng, nd, "max")
    y = getattr(gd, f"max_pool{nd}d")(chunked(rng, x), k, s, p, d, ceil).compute(scheduler="threads")
    np.testing.assert_array_equal(y, getattr(gpuconv, f"max_pool{nd}d")(x, k, s, p, d, ceil))
    ref = max_pool_nd_ref(x, k, s, pool_pads_ref(p, k, s, d, x.shape[2:]), d, ceil)[0]
    np.testing.assert_array_equal(y, np.asarray(ref).astype(x.dtype))


@pytest.mark.parametrize("nd", [1, 3])
@pytest.mark.parametrize("seed", range(8))
def test_avg_pool_nd_random_geometry_and_chunking(nd, seed):
    rng = np.random.default_rng(2000 + 100 * nd + seed)
    x, k, s, p, _, ceil = pool_case(rng, nd, "avg")
    cip = bool(rng.integers(2))
    extra = {}
    if nd == 3 and rng.integers(3) == 0:
        extra = dict(divisor_override=int(rng.integers(1, 7)))
    y = getattr(gd, f"avg_pool{nd}d")(chunked(rng, x), k, s, p, ceil, cip, **extra).compute(scheduler="threads")
    # the same cells summed in the same order, divided by the whole array's divisor: bitwise
    np.testing.assert_array_equal(y, getattr(gpuconv, f"avg_pool{nd}d")(x, k, s, p, ceil, cip, **extra))
    pads = pool_pads_ref(p, k, s, (1,) * nd, x.shape[2:])
    ov = extra.get("divisor_override")
    ref = avg_pool_nd_ref(x, k, s, pads, ceil, cip, ov)
    magnitude = avg_pool_nd_ref(np.abs(x), k, s, pads, ceil, cip, ov)
    assert_close(y, ref, magnitude, x.dtype, f"dask avg_pool{nd}d vs reference", precision="pool")


@pytest.mark.parametrize("padding", ["same", ((2, 0), (0, 1), (1, 1))])
def test_pool3d_per_side_and_same_padding(padding):
    rng = np.random.default_rng(9)
    x = rng.standard_normal((1, 2, 7, 8, 6)).astype(np.float32)
    for ceil in (False, True):
        kw = dict(stride=(2, 3, 1), padding=padding, ceil_mode=ceil)
        y = gd.max_pool3d(chunked(rng, x), (3, 2, 2), **kw).compute(scheduler="threads")
        np.testing.assert_array_equal(y, gpuconv.max_pool3d(x, (3, 2, 2), **kw))
        y = gd.avg_pool3d(chunked(rng, x), (3, 2, 2), count_include_pad=False, **kw).compute(scheduler="threads")
        np.testing.assert_array_equal(y, gpuconv.avg_pool3d(x, (3, 2, 2), count_include_pad=False, **kw))


# ------------------------------------------------------------------------------------------------
# gradients of conv1d / conv2d / conv3d
# ------------------------------------------------------------------------------------------------

def grad_case(rng, nd=2):
    x, w, _, kw = conv_case(rng, nd)
    kw.pop("activation")
    y = getattr(gpuconv, f"conv{nd}d")(x, w, None, **kw)
    gy = rng.standard_normal(y.shape).astype(x.dtype)
    stride, dilation = kw["stride"], kw["dilation"]
    pad = explicit_padding_nd(kw["padding"], w.shape[2:], stride, dilation, x.shape[2:], kw["flip"])
    refs = conv_nd_grads_ref(x, w, gy, stride, pad, dilation, kw["groups"], kw["flip"])
    mags = conv_nd_grads_ref(np.abs(x), np.abs(w), np.abs(gy), stride, pad, dilation, kw["groups"], kw["flip"])
    return x, w, gy, kw, refs, mags


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("seed", range(8))
def test_conv_weight_and_bias_gradients(nd, seed):
    rng = np.random.default_rng(3000 + 100 * nd + seed)
    x, w, gy, kw, (_, gw_ref), (_, gw_mag) = grad_case(rng, nd)
    X, GY = chunked(rng, x, small=seed % 3 == 0), chunked(rng, gy)
    gw = getattr(gd, f"conv{nd}d_weight")(X, w.shape, GY, **kw)
    assert gw.shape == w.shape and gw.numblocks == (1,) * (nd + 2)
    got = gw.compute(scheduler="threads")
    assert got.dtype == x.dtype
    assert_close(got, gw_ref, gw_mag, x.dtype, f"dask conv{nd}d_weight vs reference {kw}")
    single = getattr(gg, f"conv{nd}d_weight")(x, w.shape, gy, **kw)
    assert_close(got, single, gw_mag, x.dtype, f"dask conv{nd}d_weight vs single call {kw}")
    # a fixed summation order: the same bits whatever the scheduler
    np.testing.assert_array_equal(gw.compute(scheduler="sync"), got)
    gb = getattr(gd, f"conv{nd}d_bias")(GY).compute(scheduler="threads")
    assert gb.dtype == x.dtype
    axes = (0,) + tuple(range(2, nd + 2))
    mag = np.abs(gy).astype(np.float64).sum(axis=axes)
    assert_close(gb, gy.astype(np.float64).sum(axis=axes), mag, x.dtype, "dask conv_bias")
    assert_close(gb, getattr(gg, f"conv{nd}d_bias")(gy), mag, x.dtype, "dask conv_bias vs single call")


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("seed", range(8))
def test_conv_input_gradient(nd, seed):
    rng = np.random.default_rng(4000 + 100 * nd + seed)
    x, w, gy, kw, (gx_ref, _), (gx_mag, _) = grad_case(rng, nd)
    GY = chunked(rng, gy, small=seed % 3 == 0)
    chunks = None if seed % 2 else tuple(random_chunks(rng, n, seed % 4 == 0) for n in x.shape[2:])
    gx = getattr(gd, f"conv{nd}d_input")(x.shape, w, GY, **kw, chunks=chunks)
    assert gx.shape == x.shape and gx.chunks[0] == GY.chunks[0] and all(min(c) > 0 for c in gx.chunks)
    if chunks is not None:
        assert gx.chunks[2:] == chunks
    got = gx.compute(scheduler="threads")
    assert got.dtype == x.dtype
    assert_close(got, gx_ref, gx_mag, x.dtype, f"dask conv{nd}d_input vs reference {kw}")
    single = getattr(gg, f"conv{nd}d_input")(x.shape, w, gy, **kw)
    assert_close(got, single, gx_mag, x.dtype, f"dask conv{nd}d_input vs single {kw}")


def test_conv2d_input_skipped_rows_and_unbatched():
    """Stride larger than the window: input rows no output reads get exact zeros; unbatched arrays."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 17, 13)).astype(np.float64)
    w = rng.standard_normal((3, 2, 2, 1)).astype(np.float64)
    kw = dict(stride=(4, 3), padding=((1, 0), (0, 2)))
    gy = rng.standard_normal(gpuconv.conv2d(x, w, **kw).shape)
    gx = gd.conv2d_input(x.shape, w, da.from_array(gy, chunks=(3, 1, 2)), **kw, chunks=((1,) * 17, (5, 8)))
    np.testing.assert_allclose(gx.compute(), gg.conv2d_input(x.shape, w, gy, **kw), rtol=1e-12, atol=1e-12)
    gw = gd.conv2d_weight(da.from_array(x, chunks=(2, 3, 4)), w.shape, da.from_array(gy, chunks=2), **kw)
    np.testing.assert_allclose(gw.compute(), gg.conv2d_weight(x, w.shape, gy, **kw), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="does not match"):
        gd.conv2d_input(x.shape, w, da.from_array(gy[:, :-1], chunks=2), **kw)
    with pytest.raises(ValueError, match="chunks must be"):
        gd.conv2d_input(x.shape, w, da.from_array(gy, chunks=2), **kw, chunks=((17,), (12,)))


# ------------------------------------------------------------------------------------------------
# a real cluster of worker processes
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  memory_limit="2GiB") as cluster, distributed.Client(cluster) as c:
        yield c


@pytest.mark.parametrize("seed", range(2))
def test_nd_and_gradients_on_a_local_cluster(client, seed):
    rng = np.random.default_rng(6000 + seed)
    x, w, b, kw = conv_case(rng, 3)
    check_conv_nd(3, x, w, b, kw, client.compute(gd.conv3d(chunked(rng, x), w, b, **kw)).result())
    xp, k, s, p, d, ceil = pool_case(rng, 1, "max")
    got = client.compute(gd.max_pool1d(chunked(rng, xp), k, s, p, d, ceil)).result()
    np.testing.assert_array_equal(got, gpuconv.max_pool1d(xp, k, s, p, d, ceil))
    got = client.compute(gd.avg_pool3d(chunked(rng, x), 2, 1, 1, True, False)).result()
    np.testing.assert_array_equal(got, gpuconv.avg_pool3d(x, 2, 1, 1, True, False))
    nd = 2 + seed
    x, w, gy, kw, (gx_ref, gw_ref), (gx_mag, gw_mag) = grad_case(rng, nd)
    gx, gw = client.compute([getattr(gd, f"conv{nd}d_input")(x.shape, w, chunked(rng, gy), **kw),
                             getattr(gd, f"conv{nd}d_weight")(chunked(rng, x), w.shape, chunked(rng, gy), **kw)],
                            sync=True)
    assert_close(gx, gx_ref, gx_mag, x.dtype, f"conv{nd}d_input on a cluster")
    assert_close(gw, gw_ref, gw_mag, x.dtype, f"conv{nd}d_weight on a cluster")


def test_conv2d_input_tasks_read_only_the_grad_output_rows_that_reach_them():
    """3x3, padding 1, stride 1, grad_output in 10x10 chunks: each input-gradient chunk (default chunking: the
    same 10x10) depends on its own grad_output block and the neighbours one row/column away, nothing else;
    conv2d_weight's partial tasks likewise, and one final sum."""
    x = da.zeros((1, 2, 40, 40), chunks=(1, 2, 10, 10), dtype=np.float32)
    gy = da.zeros((1, 3, 40, 40), chunks=(1, 3, 10, 10), dtype=np.float32)
    w = np.ones((3, 2, 3, 3), np.float32)
    gx = gd.conv2d_input(x.shape, w, gy, padding=1)
    assert gx.chunks == x.chunks
    deps = gx.dask.get_all_dependencies()
    for k in [k for k in gx.dask.layers[gx.name] if isinstance(k, tuple) and k[0] == gx.name]:
        reads = {d[3:] for d in deps[k] if isinstance(d, tuple) and d[0] == gy.name}
        assert reads == {(i, j) for i in range(max(k[3] - 1, 0), min(k[3] + 2, 4))
                         for j in range(max(k[4] - 1, 0), min(k[4] + 2, 4))}
    gw = gd.conv2d_weight(x, w.shape, gy, padding=1)
    assert len([k for k in gw.dask.layers[gw.name] if isinstance(k, tuple)]) == 16 + 1


# --------------------------------------------------------------------------------------------
# map_layers and receptive_field in 1 and 3 spatial dimensions
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("nd", [1, 3])
def test_receptive_field_nd_against_impulse_responses(nd):
    """Each axis' size and stride as an impulse pushed through the real chain shows them: the outputs an
    input cell reaches, and where a neighbouring output's window starts."""
    layers = [dict(kernel_size=(3,) * nd, dilation=(2,) + (1,) * (nd - 1)),
              dict(kernel_size=(2,) * nd, stride=(2,) * nd),
              dict(kernel_size=(3,) * nd, stride=(1,) + (2,) * (nd - 1))]
    rf = gpuconv.receptive_field(layers)
    assert rf.ndim == nd and rf.padding == ((0, 0),) * nd
    conv, pool = (gpuconv.conv1d, gpuconv.max_pool1d) if nd == 1 else (gpuconv.conv3d, gpuconv.max_pool3d)

    def chain(a):
        a = conv(a, np.ones((1, 1) + (3,) * nd), dilation=(2,) + (1,) * (nd - 1))
        a = pool(a, 2, 2)
        return conv(a, np.ones((1, 1) + (3,) * nd), stride=(1,) + (2,) * (nd - 1))

    size = (24,) * nd
    assert chain(np.zeros((1, 1) + size)).shape[2:] == rf.output_size(size)
    for axis in range(nd):  # the input cells output 0 (and output 1) of this axis depends on
        for o in (0, 1):
            reads = []
            for i in range(size[axis]):
                x = np.zeros((1, 1) + size)
                x[(0, 0) + (0,) * axis + (i,) + (0,) * (nd - axis - 1)] = 1.0
                y = chain(x)
                if y[(0, 0) + (0,) * axis + (o,) + (0,) * (nd - axis - 1)] != 0:
                    reads.append(i)
            a, b = rf.input_window(o, o + 1, axis)
            assert reads[0] >= a and reads[-1] < b and b - a == rf.size[axis]
            assert a == o * rf.stride[axis]
    with pytest.raises(ValueError, match="axis"):
        rf.input_window(0, 1, nd)


@pytest.mark.parametrize("nd", [1, 3])
@pytest.mark.parametrize("seed", range(3))
def test_map_layers_nd_equals_the_chain_on_the_whole_array(nd, seed):
    rng = np.random.default_rng(300 + seed)
    C = int(rng.integers(1, 3))
    w1 = rng.standard_normal((3, C) + (3,) * nd).astype(np.float32)
    w2 = rng.standard_normal((2, 3) + (2,) * nd).astype(np.float32)
    conv, pool = (gpuconv.conv1d, gpuconv.max_pool1d) if nd == 1 else (gpuconv.conv3d, gpuconv.max_pool3d)

    def fn(a):
        return conv(pool(conv(a, w1, activation="relu"), 2, 2), w2, stride=2)

    rf = gpuconv.receptive_field([dict(kernel_size=3), dict(kernel_size=2, stride=2),
                                  dict(kernel_size=2, stride=2)], ndim=nd)
    size = tuple(int(v) for v in rng.integers(17, 40 if nd == 1 else 20, size=nd))
    x = rng.standard_normal((2, C) + size).astype(np.float32)
    pad = tuple((int(rng.integers(0, 3)), int(rng.integers(0, 3))) for _ in range(nd))
    y = gd.map_layers(chunked(rng, x), fn, rf, padding=pad).compute(scheduler="threads")
    whole = fn(np.pad(x, ((0, 0), (0, 0)) + pad))
    assert y.shape == whole.shape
    np.testing.assert_allclose(y, whole, rtol=1e-5, atol=1e-5)
