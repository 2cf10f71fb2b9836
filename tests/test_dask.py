"""``gpuconv.dask`` against the single-array calls (and the textbook references of tests/reference.py), on
random geometries and random chunkings (chunks smaller than the halo, uneven last chunks), with dask's
threaded scheduler and with a real ``distributed.LocalCluster`` of worker processes. The bounded-memory run
(an image larger than the workers' memory limit) is ``-m slow``: tests/test_dask_memory.py."""

from __future__ import annotations

import numpy as np
import pytest

da = pytest.importorskip("dask.array")

import gpuconv  # noqa: E402
import gpuconv.dask as gd  # noqa: E402
from gpuconv import receptive_field  # noqa: E402
from tests.reference import avg_pool2d_ref, max_pool2d_ref, reference_conv2d  # noqa: E402
from tests.tolerance import assert_close  # noqa: E402

DTYPES = (np.float32, np.float32, np.float64, np.float16)


def random_chunks(rng, size, small=False):
    """A random chunking of ``size``: single pixels and pairs (smaller than any halo here) when ``small``,
    else random cuts; the last chunk is whatever remains (uneven)."""
    if size <= 1:
        return (size,)
    if small:
        out, left = [], size
        while left:
            c = min(left, int(rng.integers(1, 3)))
            out.append(c)
            left -= c
        return tuple(out)
    cuts = sorted(set(rng.integers(1, size, size=int(rng.integers(0, 4))).tolist()))
    bounds = [0] + cuts + [size]
    return tuple(b - a for a, b in zip(bounds, bounds[1:]))


def chunked(rng, x, small=None):
    small = bool(rng.integers(0, 3) == 0) if small is None else small
    chunks = tuple(random_chunks(rng, n, small and a >= x.ndim - 2) for a, n in enumerate(x.shape))
    return da.from_array(x, chunks=chunks)


def conv_case(rng):
    dtype = DTYPES[int(rng.integers(len(DTYPES)))]
    groups = int(rng.choice([1, 1, 2, 3]))
    C, K = groups * int(rng.integers(1, 3)), groups * int(rng.integers(1, 3))
    R, S = int(rng.integers(1, 6)), int(rng.integers(1, 5))
    stride = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
    dilation = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
    padding = [0, "valid", "same", (int(rng.integers(0, 3)), int(rng.integers(0, 4))),
               ((int(rng.integers(0, 4)), int(rng.integers(0, 2))), (int(rng.integers(0, 2)), int(rng.integers(0, 5))))
               ][int(rng.integers(5))]
    H = int(rng.integers((R - 1) * dilation[0] + 1, 24))
    W = int(rng.integers((S - 1) * dilation[1] + 1, 24))
    N = int(rng.integers(1, 4))
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((K, C // groups, R, S)).astype(dtype)
    b = rng.standard_normal(K).astype(dtype) if rng.integers(2) else None
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, flip=bool(rng.integers(2)),
              activation=[None, "relu", "tanh"][int(rng.integers(3))])
    return x, w, b, kw


def check_conv(x, w, b, kw, y):
    expected, magnitude = reference_conv2d(x, w, b, **kw)
    single = gpuconv.conv2d(x, w, b, **kw)
    assert y.shape == single.shape and y.dtype == single.dtype
    assert_close(y, expected, magnitude, x.dtype, what=f"dask conv2d vs reference {kw}")
    assert_close(y, single, magnitude, x.dtype, what=f"dask conv2d vs single call {kw}")


@pytest.mark.parametrize("seed", range(24))
def test_conv2d_random_geometry_and_chunking(seed):
    rng = np.random.default_rng(seed)
    x, w, b, kw = conv_case(rng)
    X = chunked(rng, x, small=seed % 3 == 0)
    y = gd.conv2d(X, w, b, **kw)
    assert isinstance(y, da.Array) and y.chunks[1] == (w.shape[0],)
    assert sum(y.chunks[2]) == y.shape[2] and min(y.chunks[2]) > 0
    check_conv(x, w, b, kw, y.compute(scheduler="threads"))


def test_conv2d_unbatched_noncontiguous_and_padding_only_windows():
    rng = np.random.default_rng(100)
    base = rng.standard_normal((13, 3, 11)).astype(np.float32)
    x = base.transpose(1, 0, 2)[:, ::1, ::-1]  # CHW view, not C-contiguous
    w = rng.standard_normal((2, 3, 3, 2)).astype(np.float32)
    kw = dict(padding=((6, 1), (0, 7)), stride=(2, 1))  # whole output chunks lie in the padding
    y = gd.conv2d(da.from_array(x, chunks=(2, 1, 3)), w, None, **kw)
    assert y.ndim == 3
    check_conv(x[None], w, None, kw, y.compute()[None])


def pool_case(rng, op):
    dtype = DTYPES[int(rng.integers(len(DTYPES)))]
    kh, kw_ = int(rng.integers(1, 5)), int(rng.integers(1, 5))
    stride = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
    pad = (int(rng.integers(0, kh // 2 + 1)), int(rng.integers(0, kw_ // 2 + 1)))
    dil = (int(rng.integers(1, 3)), int(rng.integers(1, 3))) if op == "max" else (1, 1)
    H = int(rng.integers(dil[0] * (kh - 1) + 1, 20))
    W = int(rng.integers(dil[1] * (kw_ - 1) + 1, 20))
    x = rng.standard_normal((int(rng.integers(1, 3)), int(rng.integers(1, 4)), H, W)).astype(dtype)
    if rng.integers(2):
        x[0, 0, int(rng.integers(H)), int(rng.integers(W))] = np.nan
    return x, (kh, kw_), stride, pad, dil, bool(rng.integers(2))


@pytest.mark.parametrize("seed", range(16))
def test_max_pool2d_random_geometry_and_chunking(seed):
    rng = np.random.default_rng(1000 + seed)
    x, k, s, p, d, ceil = pool_case(rng, "max")
    y = gd.max_pool2d(chunked(rng, x), k, s, p, d, ceil).compute(scheduler="threads")
    single = gpuconv.max_pool2d(x, k, s, p, d, ceil)
    np.testing.assert_array_equal(y, single)  # max only compares: exact, NaN positions included
    np.testing.assert_array_equal(y, max_pool2d_ref(x, k, s, p, d, ceil)[0].astype(x.dtype))


@pytest.mark.parametrize("seed", range(16))
def test_avg_pool2d_random_geometry_and_chunking(seed):
    rng = np.random.default_rng(2000 + seed)
    x, k, s, p, _, ceil = pool_case(rng, "avg")
    cip = bool(rng.integers(2))
    override = [None, None, int(rng.integers(1, 7))][int(rng.integers(3))]
    y = gd.avg_pool2d(chunked(rng, x), k, s, p, ceil, cip, override).compute(scheduler="threads")
    single = gpuconv.avg_pool2d(x, k, s, p, ceil, cip, override)
    # each window sums the same cells in the same order and divides by the whole array's divisor: bitwise
    np.testing.assert_array_equal(y, single)
    ref = avg_pool2d_ref(x, k, s, p, ceil, cip, override)
    magnitude = avg_pool2d_ref(np.abs(x), k, s, p, ceil, cip, override)
    assert_close(y, ref, magnitude, x.dtype, "dask avg_pool2d vs reference", precision="pool")


@pytest.mark.parametrize("padding", ["same", ((2, 0), (1, 2)), ((0, 1), (3, 0))])
def test_pooling_per_side_and_same_padding(padding):
    """The pooling padding forms beyond PyTorch's (per side, TensorFlow's 'same') hold at chunk borders: equal
    to the single call (itself tested against the per-side references in tests/test_pool_padding.py)."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 3, 13, 11)).astype(np.float32)
    x[1, 2, 12, 0] = np.nan
    for ceil in (False, True):
        kw = dict(stride=(2, 3), padding=padding, ceil_mode=ceil)
        y = gd.max_pool2d(chunked(rng, x), (3, 4), dilation=(1, 1), **kw).compute(scheduler="threads")
        np.testing.assert_array_equal(y, gpuconv.max_pool2d(x, (3, 4), **kw))
        for cip in (True, False):
            y = gd.avg_pool2d(chunked(rng, x), (3, 4), count_include_pad=cip, **kw).compute(scheduler="threads")
            np.testing.assert_array_equal(y, gpuconv.avg_pool2d(x, (3, 4), count_include_pad=cip, **kw))


def test_pooling_keeps_channel_chunks():
    x = np.arange(2 * 4 * 9 * 9, dtype=np.float32).reshape(2, 4, 9, 9)
    y = gd.max_pool2d(da.from_array(x, chunks=(1, 2, 4, 5)), 3, 2, 1, ceil_mode=True)
    assert y.chunks[1] == (2, 2)
    np.testing.assert_array_equal(y.compute(), gpuconv.max_pool2d(x, 3, 2, 1, ceil_mode=True))


# ------------------------------------------------------------------------------------------------
# receptive_field and map_layers
# ------------------------------------------------------------------------------------------------

def test_receptive_field_docstring_example_and_forms():
    rf = receptive_field([dict(kernel_size=3), dict(kernel_size=3), dict(kernel_size=2, stride=2)])
    assert (rf.size, rf.stride, rf.halo, rf.padding) == ((6, 6), (2, 2), (4, 4), ((0, 0), (0, 0)))
    rf = receptive_field([dict(op="conv", kernel_size=(3, 5), padding=((1, 0), (2, 2)), stride=(1, 2)),
                          dict(kernel_size=3, dilation=2, padding=1)])
    assert rf.size == (1 + 2 + 4, 1 + 4 + 8) and rf.stride == (1, 2)
    assert rf.padding == ((2, 1), (4, 4))
    assert receptive_field([]).size == (1, 1)
    with pytest.raises(ValueError, match="'same'"):
        receptive_field([dict(kernel_size=3, padding="same")])
    with pytest.raises(ValueError, match="unknown keys"):
        receptive_field([dict(kernel=3)])
    with pytest.raises(TypeError, match="list of layer dicts"):
        receptive_field(dict(kernel_size=3))


@pytest.mark.parametrize("seed", range(6))
def test_receptive_field_matches_the_chain(seed):
    """Output sizes as the layers compose them, and ``input_window`` exactly the input that one output
    depends on: with positive weights, an output changes when any input in its window changes and never
    when one outside does (found by brute force over every input position)."""
    rng = np.random.default_rng(3000 + seed)
    layers = [dict(kernel_size=(int(rng.integers(1, 4)), int(rng.integers(1, 4))),
                   stride=(int(rng.integers(1, 3)), int(rng.integers(1, 3))),
                   dilation=(int(rng.integers(1, 3)), 1), padding=(int(rng.integers(0, 2)), 0))
              for _ in range(int(rng.integers(1, 4)))]
    rf = receptive_field(layers)

    def chain(a):
        for L in layers:
            a = gpuconv.conv2d(a, np.ones((1, 1) + L["kernel_size"]), None, L["stride"], L["padding"], L["dilation"])
        return a

    H, W = 19, 17
    base = chain(np.zeros((1, 1, H, W)))
    assert base.shape[2:] == rf.output_size((H, W))
    oh, ow = base.shape[2] // 2, base.shape[3] // 2
    (a, b), (c, d) = rf.input_window(oh, oh + 1, 0), rf.input_window(ow, ow + 1, 1)
    seen = np.zeros((H, W), bool)
    for h in range(H):
        for w in range(W):
            e = np.zeros((1, 1, H, W))
            e[0, 0, h, w] = 1
            seen[h, w] = chain(e)[0, 0, oh, ow] != 0
    inside = np.zeros((H, W), bool)
    inside[max(a, 0):b, max(c, 0):d] = True
    # dilation leaves holes inside the window; nothing outside it is read, and its first and last rows and
    # columns (inside the image) are
    assert not (seen & ~inside).any()
    rows, cols = np.nonzero(seen)
    assert rows.min() == max(a, 0) and rows.max() == min(b, H) - 1
    assert cols.min() == max(c, 0) and cols.max() == min(d, W) - 1


def test_map_layers_one_halo_for_a_chain():
    rng = np.random.default_rng(4000)
    x = rng.standard_normal((2, 3, 37, 29)).astype(np.float32)
    w1, b1 = rng.standard_normal((5, 3, 3, 3)).astype(np.float32), rng.standard_normal(5).astype(np.float32)
    w2 = rng.standard_normal((4, 5, 3, 2)).astype(np.float32)

    def fn(a):
        a = gpuconv.conv2d(a, w1, b1, activation="relu")
        a = gpuconv.max_pool2d(a, 2, 2)
        return gpuconv.conv2d(a, w2, None, stride=(1, 2), dilation=(2, 1))

    rf = receptive_field([dict(kernel_size=3), dict(kernel_size=2, stride=2),
                          dict(kernel_size=(3, 2), stride=(1, 2), dilation=(2, 1))])
    for chunks, padding in (((1, 3, 7, 5), 0), ((2, 3, 2, 3), 0), ((1, 3, 10, 11), ((3, 1), (0, 4)))):
        y = gd.map_layers(da.from_array(x, chunks=chunks), fn, rf, padding=padding)
        xp = np.pad(x, ((0, 0), (0, 0)) + (((0, 0), (0, 0)) if padding == 0 else padding))
        ref = fn(xp)
        got = y.compute(scheduler="threads")
        assert got.shape == ref.shape and y.chunks[1] == (4,)
        np.testing.assert_allclose(got, ref, rtol=2e-5, atol=2e-5 * float(np.abs(ref).max()))


def test_map_layers_rejects_a_wrong_or_padded_field():
    x = da.zeros((1, 1, 16, 16), chunks=5, dtype=np.float32)
    w = np.ones((1, 1, 3, 3), np.float32)
    with pytest.raises(ValueError, match="padded"):
        gd.map_layers(x, lambda a: gpuconv.conv2d(a, w, padding=1), receptive_field([dict(kernel_size=3, padding=1)]))
    with pytest.raises(ValueError, match="does not describe fn"):
        gd.map_layers(x, lambda a: gpuconv.conv2d(a, w), receptive_field([dict(kernel_size=5)]))
    y = gd.map_layers(x, lambda a: gpuconv.conv2d(a, w, padding=1), receptive_field([dict(kernel_size=3)]),
                      out_channels=1, dtype=np.float32)  # no probe: the wrong size shows in the chunks
    with pytest.raises(ValueError, match="does not describe fn"):
        y.compute(scheduler="sync")


# ------------------------------------------------------------------------------------------------
# the graph: errors, weights once, dependencies, meta
# ------------------------------------------------------------------------------------------------

def test_errors_are_raised_when_the_graph_is_built():
    x = da.zeros((1, 3, 8, 8), chunks=4, dtype=np.float32)
    with pytest.raises(TypeError, match="dask.array.Array"):
        gd.conv2d(np.zeros((1, 3, 8, 8), np.float32), np.ones((1, 3, 3, 3), np.float32))
    with pytest.raises(TypeError, match="same dtype"):
        gd.conv2d(x, np.ones((1, 3, 3, 3), np.float64))
    with pytest.raises(ValueError, match="expected input"):
        gd.conv2d(x, np.ones((1, 2, 3, 3), np.float32))
    assert len(gd.max_pool2d(x, 2, return_indices=True)) == 2  # supported since issue 19: test_dask_pool_grad.py
    with pytest.raises(ValueError, match="divisor must be not zero"):
        gd.avg_pool2d(x, 2, divisor_override=0)
    with pytest.raises(ValueError, match="3-D .* or 4-D"):
        gd.conv2d(da.zeros((8, 8), chunks=4), np.ones((1, 1, 3, 3)))


def test_weights_are_one_graph_node_and_tasks_read_only_their_neighbours():
    rng = np.random.default_rng(5)
    x = da.from_array(rng.standard_normal((2, 3, 40, 40)).astype(np.float32), chunks=(1, 3, 10, 10))
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    y = gd.conv2d(x, w, np.zeros(4, np.float32), padding=1)
    layer = y.dask.layers[y.name]
    deps = y.dask.get_all_dependencies()
    w_keys = [k for k in layer if isinstance(k, str) and k.startswith("gpuconv-const-")]
    assert len(w_keys) == 2  # weight and bias, once each
    out_keys = [k for k in layer if isinstance(k, tuple) and k[0] == y.name]
    assert len(out_keys) == 2 * 4 * 4
    for k in out_keys:
        inputs = {d[2:] for d in deps[k] if isinstance(d, tuple) and d[0] == x.name}
        # its own block and the neighbours its one-row halo reaches on each side, nothing else
        assert inputs == {(0, i, j) for i in range(max(k[3] - 1, 0), min(k[3] + 2, 4))
                          for j in range(max(k[4] - 1, 0), min(k[4] + 2, 4))}
        assert set(w_keys) <= set(deps[k])
    # a 1x1 convolution has no halo: one input block per output block
    y1 = gd.conv2d(x, w[:, :, :1, :1])
    deps1 = y1.dask.get_all_dependencies()
    assert all(len([d for d in deps1[k] if isinstance(d, tuple) and d[0] == x.name]) == 1
               for k in y1.dask.layers[y1.name] if isinstance(k, tuple) and k[0] == y1.name)


def test_meta_and_names():
    x = da.from_array(np.ones((1, 2, 9, 9), np.float16), chunks=4)
    w = np.ones((3, 2, 3, 3), np.float16)
    y = gd.conv2d(x, w)
    assert type(y._meta) is np.ndarray and y.dtype == np.float16
    assert gd.conv2d(x, w).name == y.name != gd.conv2d(x, w, stride=2).name
    assert gd.avg_pool2d(x, 2).name != gd.avg_pool2d(x, 2, count_include_pad=False, padding=1).name


# ------------------------------------------------------------------------------------------------
# a real cluster of worker processes
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  memory_limit="2GiB") as cluster, distributed.Client(cluster) as c:
        yield c


@pytest.mark.parametrize("seed", range(6))
def test_on_a_local_cluster_of_worker_processes(client, seed):
    rng = np.random.default_rng(6000 + seed)
    x, w, b, kw = conv_case(rng)
    X = chunked(rng, x)
    check_conv(x, w, b, kw, client.compute(gd.conv2d(X, w, b, **kw)).result())
    xp, k, s, p, d, ceil = pool_case(rng, "max")
    got = client.compute(gd.max_pool2d(chunked(rng, xp), k, s, p, d, ceil)).result()
    np.testing.assert_array_equal(got, gpuconv.max_pool2d(xp, k, s, p, d, ceil))
    got = client.compute(gd.avg_pool2d(chunked(rng, xp), k, s, p, ceil, False)).result()
    np.testing.assert_array_equal(got, gpuconv.avg_pool2d(xp, k, s, p, ceil, False))


def test_map_layers_on_a_local_cluster(client):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((1, 2, 64, 48)).astype(np.float32)
    w = rng.standard_normal((3, 2, 5, 5)).astype(np.float32)

    def fn(a):  # the weight travels inside fn, one graph node
        return gpuconv.max_pool2d(gpuconv.conv2d(a, w, activation="relu"), 3, 3)

    y = gd.map_layers(da.from_array(x, chunks=(1, 2, 16, 16)), fn,
                      receptive_field([dict(kernel_size=5), dict(kernel_size=3, stride=3)]))
    np.testing.assert_allclose(client.compute(y).result(), fn(x), rtol=1e-5, atol=1e-5)


def test_output_chunks_follow_the_input_chunks_at_the_stride():
    """Output chunk ``i`` holds the outputs whose window's centre lies in input chunk ``i``; its pieces are the
    input rows those windows cover, with the padding counted where they leave the array."""
    ax = gd.Axis(size=20, extent=5, stride=3, pad_lo=2, out=7)  # e.g. k=3, d=2, s=3, padding 2
    assert ax.output_chunks((6, 6, 8)) == (2, 2, 3)  # centre of o: 3*o; cuts at ceil(6/3)=2, ceil(12/3)=4
    assert ax.pieces(0, 2, (6, 6, 8)) == (0, [slice(0, 6)], (2, 0))  # rows [-2, 6)
    assert ax.pieces(4, 7, (6, 6, 8)) == (1, [slice(4, 6), slice(0, 8)], (0, 1))  # rows [10, 21): one past the end
    assert gd.Axis(size=4, extent=1, stride=1, pad_lo=3, out=10).pieces(0, 2, (2, 2)) == (0, [slice(0, 0)], (2, 0))
    # a stride-1 'same' convolution keeps the chunks, and so does a 2x2/2 pool (halved)
    x = da.zeros((1, 1, 30, 30), chunks=(1, 1, (8, 7, 9, 6), 10), dtype=np.float32)
    y = gd.conv2d(x, np.ones((1, 1, 5, 3), np.float32), padding="same")
    assert y.chunks == x.chunks
    assert gd.max_pool2d(y, 2, 2).chunks[2:] == ((4, 4, 4, 3), (5, 5, 5))


def test_weights_reach_each_worker_at_most_once(client):
    """Many chunks, two workers: each worker receives the weight and bias nodes at most once (from the
    worker that holds them), never once per task (the workers' own transfer logs)."""
    rng = np.random.default_rng(8)
    x = da.from_array(rng.standard_normal((2, 3, 48, 48)).astype(np.float32), chunks=(1, 3, 8, 8))
    w, b = rng.standard_normal((4, 3, 3, 3)).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    y = gd.conv2d(x, w, b, padding=1)
    consts = [k for k in y.dask.layers[y.name] if isinstance(k, str) and k.startswith("gpuconv-const-")]
    assert len(consts) == 2 and y.npartitions == 72
    client.run(lambda dask_worker: dask_worker.transfer_incoming_log.clear())
    check_conv(x.compute(), w, b, dict(padding=1), client.compute(y).result())
    # the constants were tasks of their own on the scheduler (held in a worker's memory), not inlined
    stored = client.run_on_scheduler(lambda dask_scheduler: sorted({str(t[0]) for t in dask_scheduler.transition_log
                                                                    if t[2] == "memory"}))
    assert set(consts) <= set(stored)
    logs = client.run(lambda dask_worker: [list(e["keys"]) for e in dask_worker.transfer_incoming_log])
    for entries in logs.values():
        for key in consts:
            assert sum(key in keys for keys in entries) <= 1


def test_import_gpuconv_imports_no_dask():
    """``gpuconv.dask`` is imported explicitly; ``import gpuconv`` (and the benchmark's command line) stay
    free of dask."""
    import subprocess
    import sys
    code = ("import sys, gpuconv, gpuconv.bench.cli\n"
            "assert not any(m == 'dask' or m.startswith(('dask.', 'distributed')) for m in sys.modules), "
            "sorted(m for m in sys.modules if 'dask' in m)\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.gpu
def test_cupy_chunks_stay_on_the_gpu_and_match_the_single_calls():
    """CuPy-backed dask arrays (the array's meta is a CuPy array): every function's result is CuPy-backed,
    runs our CUDA kernels per chunk and equals the single CuPy call (pooling bitwise; convolutions within
    the tolerance model, each chunk being a call of its own)."""
    from tests.runners import gpu_unavailable_reason
    reason = gpu_unavailable_reason()
    if reason:
        pytest.skip(reason)
    import cupy as cp
    rng = np.random.default_rng(11)
    x = cp.asarray(rng.standard_normal((2, 3, 37, 29)).astype(np.float32))
    w = cp.asarray(rng.standard_normal((4, 3, 3, 3)).astype(np.float32))
    xd = da.from_array(x, chunks=(1, 3, 10, 8), asarray=False)
    assert isinstance(xd._meta, cp.ndarray)
    y = gd.conv2d(xd, w, padding="same", activation="relu")
    assert isinstance(y._meta, cp.ndarray)
    got = y.compute(scheduler="threads")
    assert isinstance(got, cp.ndarray)
    ref = gpuconv.conv2d(x, w, padding="same", activation="relu")
    mag = gpuconv.conv2d(cp.abs(x), cp.abs(w), padding="same")
    assert_close(cp.asnumpy(got), cp.asnumpy(ref).astype(np.float64), cp.asnumpy(mag), np.float32, "dask cupy conv2d")
    v, i = gd.max_pool2d(xd, 3, 2, 1, return_indices=True)
    v, i = v.compute(scheduler="threads"), i.compute(scheduler="threads")
    rv, ri = gpuconv.max_pool2d(x, 3, 2, 1, return_indices=True)
    assert isinstance(v, cp.ndarray) and bool((v == rv).all()) and bool((i == ri).all())
    gx = gd.conv2d_input(x.shape, w, da.from_array(ref, chunks=(1, 4, 12, 12), asarray=False), padding="same")
    gx = gx.compute(scheduler="threads")
    rgx = gpuconv.grad.conv2d_input(x.shape, w, ref, padding="same")
    assert isinstance(gx, cp.ndarray)
    np.testing.assert_allclose(cp.asnumpy(gx), cp.asnumpy(rgx), rtol=1e-4, atol=1e-4)
