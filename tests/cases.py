"""Test cases shared by several test files: deterministic generation (``pairwise``: a covering array over
many dimensions, so every pair of values of any two dimensions appears in some case, without the full
Cartesian product), the per-kernel suites' geometry matrix (``KERNEL_CASES``: test_cuda_conv,
test_cuda_igemm, test_cuda_igemm_tc; test_cuda_depthwise builds its own with ``valid_for`` and
``kernel_case_id``), their ids and test data, and the GEMM kernels' tile-edge cases (``GEMM_EDGE_CASES``,
``conv_arrays``: test_cuda_igemm, test_cuda_igemm_tc).

Test files import helpers only from the support modules (this one, tests/reference.py, tests/tolerance.py,
tests/support.py, tests/runners.py), never from another test_*.py file.
"""

from __future__ import annotations

import itertools
import random

import numpy as np

from gpuconv._geometry import conv_geometry

DTYPES = (np.float16, np.float32, np.float64)
ACTIVATIONS = (None, "relu", "leaky_relu", "sigmoid", "tanh")


def pairwise(dims: dict, valid=lambda case: True, seed=0):
    """Greedy all-pairs: returns a list of dicts covering every (dim_a=value, dim_b=value) pair that
    appears in at least one valid case."""
    names = list(dims)
    rng = random.Random(seed)
    uncovered = set()
    for a, b in itertools.combinations(range(len(names)), 2):
        for i in range(len(dims[names[a]])):
            for j in range(len(dims[names[b]])):
                uncovered.add((a, i, b, j))

    def pairs_of(idx):
        return {(a, idx[a], b, idx[b]) for a, b in itertools.combinations(range(len(names)), 2)}

    cases, stale = [], 0
    while uncovered and stale < 50:
        best, best_gain = None, 0
        a, i, b, j = rng.choice(sorted(uncovered))  # seed each candidate with an uncovered pair
        for _ in range(60):
            idx = [rng.randrange(len(dims[n])) for n in names]
            idx[a], idx[b] = i, j
            case = {n: dims[n][k] for n, k in zip(names, idx)}
            if not valid(case):
                continue
            gain = len(pairs_of(idx) & uncovered)
            if gain > best_gain:
                best, best_gain = idx, gain
        if best is None:
            uncovered.discard((a, i, b, j))  # no valid case holds this pair
            stale += 1
            continue
        uncovered -= pairs_of(best)
        cases.append({n: dims[n][k] for n, k in zip(names, best)})
    return cases


# --------------------------------------------------------------------------------------------
# the per-kernel suites' pairwise geometry matrix
# --------------------------------------------------------------------------------------------

# (C, K, groups): Kg = 10 is one full filter block of 8 plus a partial one, and Cg = 10 is one full
# channel chunk of 8 plus a partial one; Kg = 9 with Cg = 3 over two groups; depthwise (Kg = 1) and
# depthwise x2 (Kg = 2) run the KB = 1 instantiation.
KERNEL_CHANNELS = {"g1": (10, 10, 1), "g2": (6, 18, 2), "dw": (5, 5, 5), "dw2": (3, 6, 3)}

KERNEL_DIMS = {
    "hw": [(19, 21), (7, 9), (33, 17), (16, 16)],
    "kernel": [(1, 1), (3, 3), (5, 5), (3, 1), (7, 7)],
    "stride": [1, 2, 3, (1, 2)],
    "padding": [0, 1, 2, ((0, 2), (1, 0))],
    "dilation": [1, 2, (2, 1)],
    "channels": list(KERNEL_CHANNELS),
    "N": [1, 3],
    "dtype": [np.float16, np.float32, np.float64],
    "activation": [None, "relu", "leaky_relu", "sigmoid", "tanh"],
    "flip": [False, True],
    "bias": [True, False],
    "layout": ["contiguous", "transposed", "sliced"],
}


def kernel_case_geometry(case):
    """The ``ConvGeometry`` of a ``KERNEL_CASES`` case."""
    C, K, groups = KERNEL_CHANNELS[case["channels"]]
    H, W = case["hw"]
    R, S = case["kernel"]
    return conv_geometry((case["N"], C, H, W), (K, C // groups, R, S), (K,) if case["bias"] else None,
                         case["stride"], case["padding"], case["dilation"], groups, case["flip"],
                         case["activation"])


def valid_for(geometry):
    """A filter for ``pairwise``: the case has a geometry (its kernel fits the padded input)."""
    def valid(case):
        try:
            geometry(case)
        except ValueError:  # kernel larger than the padded input
            return False
        return True
    return valid


KERNEL_CASES = pairwise(KERNEL_DIMS, valid_for(kernel_case_geometry), seed=1)


def kernel_case_id(case, *extra):
    """A readable test id for a matrix case (``extra``: further dimensions a kernel's matrix adds)."""
    def f(v):
        return str(v).replace(" ", "")
    return "-".join([f"{case['N']}x{case['channels']}x{case['hw'][0]}x{case['hw'][1]}",
                     f"k{case['kernel'][0]}x{case['kernel'][1]}", f"s{f(case['stride'])}",
                     f"p{f(case['padding'])}", f"d{f(case['dilation'])}", np.dtype(case["dtype"]).name,
                     str(case["activation"]), "flip" if case["flip"] else "xcorr",
                     "bias" if case["bias"] else "nobias", case["layout"], *extra])


def kernel_case_data(case, seed=0):
    """``(geometry, x, w, b)`` for a ``KERNEL_CASES`` case: standard normal input and bias, weights scaled
    by 1/sqrt(fan-in), in the case's dtype (``b`` None without bias)."""
    rng = np.random.default_rng(seed)
    g = kernel_case_geometry(case)
    dt = case["dtype"]
    x = rng.standard_normal((g.N, g.C, g.H, g.W)).astype(dt)
    w = (rng.standard_normal((g.K, g.Cg, g.R, g.S)) / np.sqrt(g.Cg * g.R * g.S)).astype(dt)
    b = rng.standard_normal(g.K).astype(dt) if case["bias"] else None
    return g, x, w, b


# --------------------------------------------------------------------------------------------
# the GEMM kernels' tile edges (igemm, igemm_tc)
# --------------------------------------------------------------------------------------------

# (x shape, w shape, groups, stride, padding, dilation, flip, activation, bias): M = N*P*Q, Kg = K/groups,
# reduction Cg*R*S, chosen around the tile sizes of the config named in the comment.
GEMM_EDGE_CASES = {
    # small tile (64 x 64 x 8): Kg 63 / 65 / 64, M 65 / 63 / 128, reduction 9 / 7 / 16 (one slice +- 1, 2)
    "small-k63-m65-r9": ((1, 1, 5, 13), (63, 1, 3, 3), 1, 1, 1, 1, False, "relu", True),
    "small-k65-m63-r7": ((1, 7, 7, 9), (65, 7, 1, 1), 1, 1, 0, 1, True, None, False),
    "small-k64-m128-r16": ((2, 4, 8, 8), (64, 4, 2, 2), 1, 1, ((0, 1), (1, 0)), 1, False, "sigmoid", True),
    # large tile (128 x 128 x 8): Kg 127 / 129, M 129 / 127, reduction 25 / 8 (3 slices + 1, exactly 1)
    "large-k127-m129-r25": ((3, 1, 1, 43), (127, 1, 5, 5), 1, 1, 2, 1, True, "leaky_relu", False),
    "large-k129-m127-r8": ((1, 2, 1, 127), (129, 2, 1, 4), 1, 1, ((0, 0), (2, 1)), 1, False, "tanh", True),
    # strided, dilated, grouped: 2 groups of Kg 65, M = 2*5*5 = 50, reduction 3*3*3 = 27
    "groups-stride-dilation": ((2, 6, 11, 9), (130, 3, 3, 3), 2, (2, 2), 1, (2, 1), True, None, True),
    # one of everything: 1 filter, 1 pixel, reduction 1
    "tiny": ((1, 1, 1, 1), (1, 1, 1, 1), 1, 1, 0, 1, False, None, True),
}


def conv_arrays(shape_x, shape_w, dtype, bias=True, seed=0):
    """``(x, w, b)``: standard normal input and bias, weights scaled by 1/sqrt(fan-in)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape_x).astype(dtype)
    fan_in = int(np.prod(shape_w[1:]))
    w = (rng.standard_normal(shape_w) / np.sqrt(fan_in)).astype(dtype)
    b = rng.standard_normal(shape_w[0]).astype(dtype) if bias else None
    return x, w, b
