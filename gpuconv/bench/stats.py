"""Pure figures of the benchmark, no device involved: the roofline (FP32 peak from the compute capability,
the roofline's time bound), the statistics of the repetitions, the correctness check against the reference
and its tolerances, and the order of the timed calls."""

from __future__ import annotations

import math
import statistics

import numpy as np

# FP32 lanes (FP32 fused multiply-adds per clock) per SM, by compute capability: the "32-bit
# floating-point add, multiply, multiply-add" row of the CUDA C++ Programming Guide's arithmetic-throughput
# table. Note sm_80 (A100) has 64, while sm_86 / sm_89 / sm_90 have 128.
FP32_LANES_PER_SM = {
    (5, 0): 128, (5, 2): 128, (5, 3): 128,
    (6, 0): 64, (6, 1): 128, (6, 2): 128,
    (7, 0): 64, (7, 2): 64, (7, 5): 64,
    (8, 0): 64, (8, 6): 128, (8, 7): 128, (8, 9): 128,
    (9, 0): 128,
    (10, 0): 128, (10, 3): 128, (11, 0): 128, (12, 0): 128, (12, 1): 128,
}

# (rtol, atol) of the check against the reference; outputs are O(1) by the choice of inputs.
TOLERANCES = {"float32": (1e-3, 1e-3), "float16": (1e-2, 1e-2), "float64": (1e-9, 1e-9)}
TF32_TOLERANCE = (2e-2, 2e-2)  # TF32 rounds the inputs to a 10-bit mantissa: compared loosely


def fp32_lanes_per_sm(cc) -> int | None:
    """FP32 lanes per SM for a compute capability ``(major, minor)``; None if not in the table."""
    return FP32_LANES_PER_SM.get(tuple(cc)) if cc else None


def fp32_peak_flops(sm_count, cc, clock_khz) -> float | None:
    """SMs x FP32 lanes per SM x 2 (an FMA is two flops) x clock; None when a figure is unknown.
    E.g. H100 SXM: 132 x 128 x 2 x 1.98 GHz = 66.9 TFLOP/s."""
    lanes = fp32_lanes_per_sm(cc)
    if not (sm_count and lanes and clock_khz):
        return None
    return float(sm_count) * lanes * 2 * float(clock_khz) * 1e3


def roofline_seconds(flops, nbytes, peak_flops, bandwidth) -> float | None:
    """The roofline's lower bound on the time, ``max(flops / peak, bytes / bandwidth)``; None when a
    figure the bound needs is unknown."""
    if nbytes and not bandwidth:
        return None
    if flops and not peak_flops:
        return None
    return max(flops / peak_flops if flops else 0.0, nbytes / bandwidth if nbytes else 0.0)


def summarize(seconds) -> dict:
    """Median, min and max of the repetitions, in ms."""
    ms = [s * 1e3 for s in seconds]
    return dict(median_ms=statistics.median(ms), min_ms=min(ms), max_ms=max(ms), n=len(ms))


def geomean(values) -> float | None:
    values = [v for v in values if v]
    return math.exp(sum(map(math.log, values)) / len(values)) if values else None


def array_module(a):
    """numpy or cupy, whichever ``a`` belongs to (cupy imported only for its arrays)."""
    if type(a).__module__.split(".")[0] == "cupy":
        import cupy
        return cupy
    return np


def check_close(out, ref, rtol, atol, magnitude=None) -> dict:
    """``|out - ref| <= atol + rtol * |ref|`` everywhere (NaN fails), computed on the arrays' device.
    ``magnitude`` (gradients, which sum many terms that cancel): the same computation on the operands'
    absolute values, the sum of ``|terms|`` per element, replaces ``|ref|`` in the bound, the scale that
    rounding errors grow with. Returns ``ok``, ``max_abs_err``, ``ref_max_abs``, ``worst`` (the largest
    ``|out-ref| / (atol + rtol|ref|)``, <= 1 passes), ``rtol``, ``atol`` (and ``magnitude_max``)."""
    if tuple(out.shape) != tuple(ref.shape):
        return dict(ok=False, reason=f"shape {tuple(out.shape)} != reference {tuple(ref.shape)}",
                    rtol=rtol, atol=atol)
    xp = array_module(ref)
    a, b = out.astype(xp.float32), ref.astype(xp.float32)
    diff = xp.abs(a - b)
    scale = xp.abs(b) if magnitude is None else xp.abs(magnitude.astype(xp.float32))
    worst = diff / (atol + rtol * scale)
    finite = bool(xp.all(xp.isfinite(a)))
    d = dict(ok=finite and bool(xp.all(worst <= 1)),
             max_abs_err=float(diff.max()) if diff.size else 0.0,
             ref_max_abs=float(xp.abs(b).max()) if b.size else 0.0,
             worst=float(worst.max()) if worst.size else 0.0, rtol=rtol, atol=atol)
    if magnitude is not None:
        d["magnitude_max"] = float(scale.max()) if scale.size else 0.0
    return d


def schedule(n_contenders: int, repeats: int, interleave: bool, rounds: int = 1) -> list[int]:
    """The order of the timed calls, as contender indices. Interleaved (GPU): every repetition calls
    each contender once, the order reversed every other repetition. Blocked (CPU): all repetitions of
    contender 0, then of 1, ...; with ``rounds`` > 1 the repetitions are split into that many rounds of
    such blocks, which contender goes first alternating from round to round (both libraries then see the
    same machine load as other processes come and go)."""
    if not interleave:
        rounds = max(1, min(rounds, repeats))
        order = []
        for r in range(rounds):
            block = repeats // rounds + (1 if r < repeats % rounds else 0)
            turn = list(range(n_contenders))
            order += [i for i in (turn[::-1] if r % 2 else turn) for _ in range(block)]
        return order
    order = []
    for rep in range(repeats):
        turn = list(range(n_contenders))
        order += turn[::-1] if rep % 2 else turn
    return order
