"""Random shapes and arguments (hypothesis) on every backend against the textbook references."""

from __future__ import annotations

import numpy as np
import pytest

import gpuconv
from tests.reference import conv2d_ref, conv_out, max_pool2d_ref, pool_out
from tests.runners import GENERAL_CONV_RUNNERS, POOL_RUNNERS
from tests.tolerance import assert_close

pytest.importorskip("hypothesis")  # an optional test dependency (the 'test' extra): skip, not break, without it

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def conv_problems(draw):
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    cg, kg = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    R, S = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    sh, sw, dh, dw = (draw(st.integers(1, 3)) for _ in range(4))
    pad = tuple(draw(st.integers(0, 3)) for _ in range(4))
    H = draw(st.integers(max(1, (R - 1) * dh + 1 - pad[0] - pad[1]), 14))
    W = draw(st.integers(max(1, (S - 1) * dw + 1 - pad[2] - pad[3]), 14))
    N = draw(st.integers(1, 3))
    dtype = draw(st.sampled_from(["float32", "float64"]))
    return dict(N=N, C=groups * cg, H=H, W=W, K=groups * kg, R=R, S=S, groups=groups, stride=(sh, sw),
                dilation=(dh, dw), pad=pad, dtype=dtype, bias=draw(st.booleans()),
                seed=draw(st.integers(0, 2**31)))


@pytest.mark.parametrize("runner", GENERAL_CONV_RUNNERS)
@SETTINGS
@given(problem=conv_problems())
def test_conv2d_random(runner, problem):
    p = problem
    rng = np.random.default_rng(p["seed"])
    dt = np.dtype(p["dtype"])
    x = rng.standard_normal((p["N"], p["C"], p["H"], p["W"])).astype(dt)
    w = rng.standard_normal((p["K"], p["C"] // p["groups"], p["R"], p["S"])).astype(dt)
    b = rng.standard_normal(p["K"]).astype(dt) if p["bias"] else None
    pt, pb, pl, pr = p["pad"]
    y = runner.call(gpuconv.conv2d, x, w, b, stride=p["stride"], padding=((pt, pb), (pl, pr)),
                    dilation=p["dilation"], groups=p["groups"])
    kw = dict(stride=p["stride"], pad=p["pad"], dilation=p["dilation"], groups=p["groups"])
    assert y.shape == (p["N"], p["K"], conv_out(p["H"], p["R"], p["stride"][0], pt, pb, p["dilation"][0]),
                       conv_out(p["W"], p["S"], p["stride"][1], pl, pr, p["dilation"][1]))
    assert_close(y, conv2d_ref(x, w, b, **kw),
                          conv2d_ref(np.abs(x), np.abs(w), None if b is None else np.abs(b), **kw), dt)


@st.composite
def pool_problems(draw):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    dh, dw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ceil_mode = draw(st.booleans())
    H, W = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    return dict(k=(kh, kw), s=(sh, sw), p=(ph, pw), d=(dh, dw), ceil=ceil_mode, H=H, W=W,
                nan=draw(st.booleans()), seed=draw(st.integers(0, 2**31)))


@pytest.mark.parametrize("runner", POOL_RUNNERS)
@SETTINGS
@given(problem=pool_problems())
def test_max_pool2d_random(runner, problem):
    p = problem
    if min(pool_out(p["H"], p["k"][0], p["s"][0], p["p"][0], p["d"][0], p["ceil"]),
           pool_out(p["W"], p["k"][1], p["s"][1], p["p"][1], p["d"][1], p["ceil"])) < 1:
        with pytest.raises(ValueError, match="Output size is too small"):
            gpuconv.max_pool2d(np.zeros((1, 1, p["H"], p["W"])), p["k"], p["s"], p["p"], p["d"], p["ceil"])
        return
    rng = np.random.default_rng(p["seed"])
    x = rng.standard_normal((2, 2, p["H"], p["W"]))
    if p["nan"]:
        x[rng.random(x.shape) < 0.2] = np.nan
    y, idx = runner.call(gpuconv.max_pool2d, x, p["k"], p["s"], p["p"], p["d"], p["ceil"], return_indices=True)
    ev, ei = max_pool2d_ref(x, p["k"], p["s"], p["p"], p["d"], p["ceil"])
    np.testing.assert_array_equal(y, ev)
    np.testing.assert_array_equal(idx, ei)
