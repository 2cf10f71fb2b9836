"""Memory bound of the NumPy path (issue 14, item 1): every call's peak memory above its inputs is at most
its output + the workspace limit (``GPUCONV_NUMPY_WORKSPACE_MB``, default 256 MiB) + ``SMALL``, for any
geometry: one huge image, huge padding, a large batch, many channels, every pooling op.

Measured in subprocesses (fresh interpreters, so nothing earlier in the test session is held) with
``tracemalloc``: NumPy reports every array allocation to it (domain 389047), so its peak is exact and
deterministic, where the resident set also moves with the allocator's and the kernel's bookkeeping.
"Temporaries" of a call = traced peak during the call - traced memory before it (the inputs) + the
workspace buffer kept from earlier calls (idle, but held) - the output. The interpreter's own small
objects are traced too and are part of ``SMALL`` (imports and the thread pool are warmed up first). The
resident set's peak (VmHWM, reset before each call) is checked as well, with a looser slack, and one test
runs under an address-space limit, where a call whose output cannot be allocated raises NumPy's
``MemoryError`` and a call whose output fits succeeds: the temporaries never take the process down.

Then the correctness of the pieces: with a workspace of 512 bytes or 10 KiB every op runs in tiles or
blocks (conv2d down to sums split over channels and filter taps) and must still match the textbook
references, NaN and indices included.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import gpuconv
from tests.reference import adaptive_pool2d_ref, avg_pool2d_ref, conv2d_ref, max_pool2d_ref
from tests.tolerance import assert_close

MiB = 2**20
SMALL = 2 * MiB  # what a call may allocate beyond output + workspace: small arrays, Python objects
DEFAULT_WORKSPACE = 256 * MiB  # the documented default of GPUCONV_NUMPY_WORKSPACE_MB

CHILD = textwrap.dedent(r"""
    import json, sys, tracemalloc
    import numpy as np
    import gpuconv
    from gpuconv._numpy import _workspace

    def make(shape, dtype, layout, rng):
        if layout == "transposed":  # same values, the H and W axes swapped in memory
            return np.ascontiguousarray(rng.standard_normal(shape[:2] + shape[:1:-1]).astype(dtype)).swapaxes(2, 3)
        return rng.standard_normal(shape).astype(dtype)

    def hwm_reset():
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return True
        except OSError:
            return False

    def status(key):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        return None

    # warm-up: imports, the thread pool and BLAS start before anything is measured
    x0, w0 = np.ones((2, 4, 9, 9), np.float32), np.ones((4, 2, 3, 3), np.float32)
    gpuconv.conv2d(x0, w0, padding=1, groups=2)
    gpuconv.conv2d(x0, w0[:, :1], padding=1, groups=4)
    gpuconv.max_pool2d(x0, 2, return_indices=True)
    gpuconv.avg_pool2d(x0, 2)
    gpuconv.adaptive_avg_pool2d(x0, 4)
    gpuconv.adaptive_max_pool2d(x0, 4, return_indices=True)
    _workspace.release_workspace()
    cases = json.loads(sys.argv[1])
    tracemalloc.start()
    results = []
    for case in cases:
        rng = np.random.default_rng(0)
        dtype = np.dtype(case.get("dtype", "float32"))
        x = make(tuple(case["x"]), dtype, case.get("layout", "contiguous"), rng)
        kw = dict(case.get("kw", {}))
        if case["op"] == "conv2d":
            w = rng.standard_normal(case["w"]).astype(dtype)
            b = rng.standard_normal(case["w"][0]).astype(dtype)
            call = lambda: gpuconv.conv2d(x, w, b, **kw)
        else:
            call = lambda: getattr(gpuconv, case["op"])(x, **kw)
        if case.get("fresh", True):
            _workspace.release_workspace()
        held = _workspace.kept_bytes()
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        rss = hwm_reset() and status("VmRSS")
        out = call()
        hwm = status("VmHWM") if rss else None
        peak = tracemalloc.get_traced_memory()[1]
        outs = out if isinstance(out, tuple) else (out,)
        out_bytes = sum(o.nbytes for o in outs)
        results.append(dict(case=case, out=out_bytes, temp=peak - before + held - out_bytes,
                            rss_temp=None if not rss else hwm - rss - out_bytes,
                            kernel=gpuconv.last_kernel().kernel))
        out = outs = x = w = b = call = None
    _workspace.release_workspace()
    results.append(dict(left=tracemalloc.get_traced_memory()[0]))
    if results[-1]["left"] > 2**20:
        for stat in tracemalloc.take_snapshot().statistics("traceback")[:3]:
            print(stat, *stat.traceback.format(), sep="\n", file=sys.stderr)
    print(json.dumps(results))
""")


def run_child(cases, workspace_mb=None, timeout=120):
    env = dict(os.environ)
    env.pop("GPUCONV_NUMPY_WORKSPACE_MB", None)
    if workspace_mb is not None:
        env["GPUCONV_NUMPY_WORKSPACE_MB"] = str(workspace_mb)
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cases)], env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.splitlines()[-1])
    results[-1]["stderr"] = proc.stderr[-3000:]
    return results


def check_bound(results, workspace, rss_slack=None):
    """Every case's temporaries <= workspace + SMALL (and, with ``rss_slack``, its resident-set growth
    beyond the output <= workspace + rss_slack); all failures in one message."""
    bad = []
    for r in results[:-1]:
        line = (f"{r['case']}: output {r['out'] / MiB:.1f} MiB, temporaries {r['temp'] / MiB:.1f} MiB "
                f"(bound {(workspace + SMALL) / MiB:.1f}), {r['kernel']}")
        if r["temp"] > workspace + SMALL:
            bad.append(line)
        if rss_slack is not None and r["rss_temp"] is not None and r["rss_temp"] > workspace + rss_slack:
            bad.append(line + f"; resident set grew {r['rss_temp'] / MiB:.1f} MiB beyond the output")
    assert not bad, "peak memory above output + workspace:\n" + "\n".join(bad)
    # nothing stays behind in other threads (the pool's) once the caller's workspace is released
    left = results[-1]
    assert left["left"] <= SMALL, f"{left['left'] / MiB:.1f} MiB still held after the calls:\n{left['stderr']}"


WS_MB = 8  # a small workspace limit, so that moderate sizes show the bound


def conv(x, w, dtype="float32", **kw):
    return dict(op="conv2d", x=x, w=w, dtype=dtype, kw=kw)


CONV_CASES = {
    # the padding=5000 call, scaled: the output is 1206 x 1206, the input 8 x 8
    "huge padding": conv([2, 3, 8, 8], [4, 3, 3, 3], padding=600),
    "huge padding, strided and dilated": conv([2, 3, 9, 7], [5, 3, 3, 2], padding=((700, 3), (2, 900)),
                                              stride=(2, 3), dilation=(2, 5)),
    "one large image": conv([1, 3, 1000, 1000], [4, 3, 3, 3], padding=1),
    "one large image, float16, leaky_relu": conv([1, 3, 700, 700], [4, 3, 3, 3], "float16", padding=1,
                                                  activation="leaky_relu"),
    "large batch": conv([64, 16, 32, 32], [16, 16, 3, 3], padding=1),
    "many channels": conv([1, 512, 32, 32], [64, 512, 3, 3], padding=1),
    "winograd": conv([1, 128, 64, 64], [128, 128, 3, 3], padding=1),
    "depthwise large image": conv([1, 8, 800, 800], [8, 1, 3, 3], padding=1, groups=8),
    "1x1 float16": conv([1, 64, 256, 256], [32, 64, 1, 1], "float16"),
    "1x1 transposed": dict(conv([1, 64, 256, 256], [32, 64, 1, 1]), layout="transposed"),
    "strided, short rows, batch": conv([16, 8, 200, 40], [8, 8, 5, 5], stride=2, padding=2),
    "sample-innermost": conv([32, 16, 100, 10], [16, 16, 5, 5]),
    "huge dilation over padding": conv([1, 4, 8, 8], [4, 4, 3, 3], padding=1500, dilation=1500),
}

POOL_CASES = {
    "max_pool2d": dict(op="max_pool2d", x=[2, 2, 1500, 1500], kw=dict(kernel_size=2, stride=1)),
    "max_pool2d indices": dict(op="max_pool2d", x=[2, 2, 1500, 1500],
                               kw=dict(kernel_size=2, stride=1, return_indices=True)),
    "max_pool2d indices, dilated, transposed": dict(op="max_pool2d", x=[1, 3, 900, 1100], layout="transposed",
                                                    kw=dict(kernel_size=3, stride=1, padding=1, dilation=2,
                                                            return_indices=True)),
    "max_pool2d float16": dict(op="max_pool2d", x=[2, 2, 1500, 1500], dtype="float16",
                               kw=dict(kernel_size=3, stride=2, padding=1)),
    "max_pool2d float16 indices": dict(op="max_pool2d", x=[1, 2, 1500, 1500], dtype="float16",
                                       kw=dict(kernel_size=2, stride=1, return_indices=True)),
    "avg_pool2d": dict(op="avg_pool2d", x=[1, 1, 2000, 2000], kw=dict(kernel_size=2, stride=1)),
    "avg_pool2d float16": dict(op="avg_pool2d", x=[2, 2, 1500, 1500], dtype="float16",
                               kw=dict(kernel_size=3, stride=1, padding=1, count_include_pad=False)),
    "adaptive_avg_pool2d": dict(op="adaptive_avg_pool2d", x=[2, 4, 1000, 999], kw=dict(output_size=(10, 500))),
    "adaptive_avg_pool2d equal, float16": dict(op="adaptive_avg_pool2d", x=[2, 4, 1000, 1000], dtype="float16",
                                               kw=dict(output_size=(500, 500))),
    "adaptive_avg_pool2d equal, transposed": dict(op="adaptive_avg_pool2d", x=[2, 4, 1000, 1000],
                                                  layout="transposed", kw=dict(output_size=(500, 250))),
    "global avg float16": dict(op="adaptive_avg_pool2d", x=[2, 4, 1000, 1000], dtype="float16",
                               kw=dict(output_size=1)),
    "global avg transposed": dict(op="adaptive_avg_pool2d", x=[2, 4, 1000, 1000], layout="transposed",
                                  kw=dict(output_size=1)),
    "adaptive_max_pool2d indices": dict(op="adaptive_max_pool2d", x=[2, 4, 1000, 1000],
                                        kw=dict(output_size=(10, 500), return_indices=True)),
    "adaptive_max_pool2d float16": dict(op="adaptive_max_pool2d", x=[2, 4, 1000, 1000], dtype="float16",
                                        kw=dict(output_size=(7, 7))),
    "global max indices, transposed": dict(op="adaptive_max_pool2d", x=[2, 4, 1000, 1000],
                                           layout="transposed", kw=dict(output_size=1, return_indices=True)),
}


def test_conv2d_peak_memory_is_bounded():
    """Each conv2d strategy and the geometries of the issue: temporaries <= workspace + SMALL."""
    check_bound(run_child(list(CONV_CASES.values()), WS_MB), WS_MB * MiB, rss_slack=16 * MiB)


def test_pooling_peak_memory_is_bounded():
    """Every pooling op, with and without indices, float16, non-contiguous inputs."""
    check_bound(run_child(list(POOL_CASES.values()), WS_MB), WS_MB * MiB, rss_slack=16 * MiB)


def test_kept_workspace_counts_against_the_limit():
    """A workspace buffer kept from an earlier call (idle, but held) plus the next call's temporaries
    stay within the limit: a large call, then other strategies and pooling in the same process."""
    cases = [CONV_CASES["one large image"], dict(CONV_CASES["depthwise large image"], fresh=False),
             dict(CONV_CASES["one large image, float16, leaky_relu"], fresh=False),
             dict(POOL_CASES["max_pool2d indices"], fresh=False), dict(CONV_CASES["winograd"], fresh=False)]
    check_bound(run_child(cases, WS_MB), WS_MB * MiB)


def test_default_workspace_is_256_mib():
    """Without GPUCONV_NUMPY_WORKSPACE_MB one sample whose temporaries would exceed 256 MiB is split: the
    issue's 4000 x 4000 image, scaled to 2000 x 2000 (about 540 MiB of temporaries in one piece)."""
    check_bound(run_child([conv([1, 3, 2000, 2000], [4, 3, 3, 3], padding=1)]), DEFAULT_WORKSPACE)


ADDRESS_LIMIT_CHILD = textwrap.dedent(r"""
    import resource, numpy as np, gpuconv
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    gpuconv.conv2d(rng.standard_normal((2, 4, 64, 64)).astype(np.float32), np.ones((4, 1, 3, 3), np.float32),
                   padding=1, groups=4)  # starts the thread pool (and BLAS) before the limit is set
    gpuconv.conv2d(x, w, padding=10)
    with open("/proc/self/status") as f:
        vm = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (vm + 128 * 2**20, resource.getrlimit(resource.RLIMIT_AS)[1]))
    y = gpuconv.conv2d(x, w, padding=685)  # output 58 MiB
    print("fits", y.shape, flush=True)
    try:
        gpuconv.conv2d(x, w, padding=5000)  # output 3.1 GB
    except MemoryError:
        print("MemoryError", flush=True)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="address-space limit: Linux")
def test_out_of_memory_is_a_memory_error_not_a_killed_process():
    """Under an address-space limit 128 MiB above the process's size (workspace 16 MiB here): the
    issue's call scaled to a 58 MiB output succeeds (its temporaries, 9.5x the output before the fix,
    would not fit), and padding=5000, whose 3.1 GB output cannot be allocated, raises MemoryError."""
    env = dict(os.environ, GPUCONV_NUMPY_WORKSPACE_MB="16")
    proc = subprocess.run([sys.executable, "-c", ADDRESS_LIMIT_CHILD], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split("\n")[:2] == ["fits (2, 4, 1376, 1376)", "MemoryError"], proc.stdout


# --- correctness of the pieces: a workspace far too small for one sample (or one plane) ---

TINY_MB = ["0.0005", "0.01"]  # 512 bytes: tiles of a few outputs, sums split over channels and taps; 10 KiB


# xshape, wshape, groups, stride, (top, bottom, left, right), dilation, flip, activation, dtype
CONV_TILE_CASES = [
    ((2, 3, 9, 7), (4, 3, 3, 2), 1, (2, 1), (1, 2, 0, 3), (1, 2), False, "relu", "float32"),  # im2col
    ((3, 4, 7, 7), (5, 4, 3, 3), 1, (1, 1), (1, 1, 1, 1), (1, 1), True, None, "float64"),  # chwn
    ((2, 6, 10, 9), (4, 6, 3, 3), 1, (1, 1), (1, 1, 2, 0), (1, 1), False, "tanh", "float32"),  # winograd
    ((2, 6, 11, 10), (12, 1, 3, 3), 6, (2, 1), (1, 1, 1, 2), (1, 2), False, "leaky_relu", "float16"),  # depthwise
    ((2, 8, 6, 5), (3, 8, 1, 1), 1, (1, 1), (0, 0, 0, 0), (1, 1), False, "sigmoid", "float16"),  # 1x1
    ((1, 8, 6, 6), (6, 4, 3, 3), 2, (1, 2), (2, 0, 1, 1), (2, 1), False, None, "float64"),  # groups
    ((2, 2, 3, 4), (3, 2, 2, 3), 1, (1, 2), (9, 4, 6, 11), (3, 1), False, "sigmoid", "float32"),  # huge padding
    ((1, 3, 5, 5), (2, 3, 3, 3), 1, (1, 1), (12, 12, 12, 12), (12, 12), True, None, "float64"),  # dilated
]


@pytest.mark.parametrize("workspace_mb", TINY_MB)
@pytest.mark.parametrize("case", CONV_TILE_CASES, ids=lambda c: f"{c[0]}-{c[1]}-g{c[2]}")
def test_conv2d_in_tiles_matches_the_reference(monkeypatch, workspace_mb, case):
    """conv2d computed in tiles (output rows and columns, groups, filters; sums split over channels and
    filter taps; outputs whose window lies wholly in the padding written as the bias) against the
    textbook reference on an explicitly zero-padded input, with an infinite weight: NaN wherever it
    multiplies padding (the zero is multiplied), +-inf where it meets the input."""
    from gpuconv._numpy import conv as numpy_conv
    xshape, wshape, groups, stride, pad, dilation, flip, activation, dtype = case
    monkeypatch.setattr(numpy_conv, "WINOGRAD_MIN_CHANNELS", 1)  # the winograd case is small
    monkeypatch.setattr(numpy_conv, "WINOGRAD_MIN_OUTPUT", 1)
    monkeypatch.setenv("GPUCONV_NUMPY_WORKSPACE_MB", workspace_mb)
    rng = np.random.default_rng(sum(xshape) + sum(wshape))
    x = (rng.uniform(0.5, 1.5, xshape) * rng.choice([-1, 1], xshape)).astype(dtype)  # no zeros
    w = rng.standard_normal(wshape).astype(dtype)
    b = rng.standard_normal(wshape[0]).astype(dtype)
    pt, pb, pl, pr = pad
    kw = dict(stride=stride, padding=((pt, pb), (pl, pr)), dilation=dilation, groups=groups, flip=flip,
              activation=activation)
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    ref = dict(stride=stride, dilation=dilation, groups=groups, flip=flip)
    for inf in (False, True):
        if inf:
            w = w.copy()
            w[0, 0, 0, 0] = np.inf  # (Winograd declines it: its transforms would turn inf into NaN)
        y = gpuconv.conv2d(x, w, b, **kw)
        with np.errstate(all="ignore"):
            expected = conv2d_ref(xp, w, b, activation=activation, **ref)
            magnitude = conv2d_ref(np.abs(xp), np.abs(w), np.abs(b), **ref)
        assert_close(y, expected, magnitude, y.dtype, f"{case} inf={inf} {gpuconv.last_kernel().kernel}")
        if inf and any(pad):
            assert np.isnan(y).any()


POOL_TILE_CASES = [  # op, shape, kwargs
    ("max_pool2d", (2, 2, 9, 8), dict(kernel_size=3, stride=2, padding=0, dilation=(1, 3), ceil_mode=True)),
    ("max_pool2d", (2, 3, 11, 13), dict(kernel_size=(3, 2), stride=(1, 2), padding=(1, 1), dilation=2)),
    ("max_pool2d", (1, 2, 6, 20), dict(kernel_size=2, stride=1, padding=1)),
    ("avg_pool2d", (2, 3, 11, 13),
     dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False)),
    ("avg_pool2d", (1, 2, 9, 20), dict(kernel_size=(2, 3), stride=1, padding=(1, 1), divisor_override=5)),
    ("adaptive_avg_pool2d", (2, 3, 11, 13), dict(output_size=(4, 5))),
    ("adaptive_avg_pool2d", (2, 3, 12, 10), dict(output_size=(4, 5))),
    ("adaptive_avg_pool2d", (2, 3, 12, 10), dict(output_size=1)),
    ("adaptive_max_pool2d", (2, 3, 11, 13), dict(output_size=(4, 5))),
    ("adaptive_max_pool2d", (2, 3, 21, 17), dict(output_size=1)),
]


def _pool_reference(op, x, kw):
    if op == "max_pool2d":
        pair = lambda v: (v, v) if isinstance(v, int) else tuple(v)  # noqa: E731
        k = pair(kw["kernel_size"])
        return max_pool2d_ref(x, k, pair(kw.get("stride", k)), pair(kw.get("padding", 0)),
                              pair(kw.get("dilation", 1)), kw.get("ceil_mode", False))
    if op == "avg_pool2d":
        pair = lambda v: (v, v) if isinstance(v, int) else tuple(v)  # noqa: E731
        k = pair(kw["kernel_size"])
        return avg_pool2d_ref(x, k, pair(kw.get("stride", k)), pair(kw.get("padding", 0)),
                              kw.get("ceil_mode", False), kw.get("count_include_pad", True),
                              kw.get("divisor_override")), None
    out = kw["output_size"]
    out = (out, out) if isinstance(out, int) else out
    if op == "adaptive_avg_pool2d":
        return adaptive_pool2d_ref(x, out, "avg"), None
    return adaptive_pool2d_ref(x, out, "max")


@pytest.mark.parametrize("workspace_mb", TINY_MB)
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("case", POOL_TILE_CASES, ids=lambda c: f"{c[0]}-{c[1]}")
def test_pooling_in_blocks_matches_the_reference(monkeypatch, workspace_mb, dtype, case):
    """Pooling in blocks of channels, rows and columns (global max pooling with indices in bands of rows
    merged by PyTorch's rule) against the textbook references, on data with ties and NaN, through a
    non-contiguous view; max pooling exactly, indices included."""
    op, shape, kw = case
    monkeypatch.setenv("GPUCONV_NUMPY_WORKSPACE_MB", workspace_mb)
    rng = np.random.default_rng(sum(shape))
    x = np.round(rng.standard_normal(shape) * 2).astype(dtype)  # ties
    x[rng.random(shape) < 0.08] = np.nan
    view = np.ascontiguousarray(x.swapaxes(2, 3)).swapaxes(2, 3)
    values, indices = _pool_reference(op, x, kw)
    if op.endswith("max_pool2d"):
        y, idx = getattr(gpuconv, op)(view, return_indices=True, **kw)
        np.testing.assert_array_equal(y, values.astype(dtype))
        np.testing.assert_array_equal(idx, indices)
        np.testing.assert_array_equal(getattr(gpuconv, op)(view, **kw), y)
    else:
        y = getattr(gpuconv, op)(view, **kw)
        magnitude = _pool_reference(op, np.abs(x), kw)[0]
        assert_close(y, values, magnitude, y.dtype, f"{case}", precision="pool")
