"""The one tolerance model for every comparison of a computed result with a textbook reference
(tests/reference.py), on every backend: the shared matrices (NumPy, emulated and GPU runners), the
per-kernel suites (tests/test_cuda_*.py), the NumPy-path and oracle tests.

The model (``assert_close``), elementwise::

    |actual - expected| <= REL[precision][dtype] * max(magnitude, |expected|)

* ``magnitude``: the size of the numbers the result was made from: the reference evaluated on the absolute
  values of its operands (for a convolution the sum of |x * w| over the taps plus |b|, before the
  activation: ``reference_conv2d``'s second result; for an average the same average of |x|). A sum's
  rounding error is bounded by a multiple of it, however much the terms cancel.
* ``|expected|``: the result itself, for what is rounded after the sum: a sigmoid's output is not bounded
  by the magnitude of its input (0.5 for a zero input), and the output is rounded to its dtype. For every
  op but a sigmoid epilogue ``|expected| <= magnitude``, so the bound is ``REL * magnitude``.
* NaN must be NaN in both at the same positions; an infinite ``expected`` must be matched exactly (same
  sign), and where ``magnitude`` is infinite but ``expected`` finite (a sigmoid / tanh of an infinite sum)
  too; the bound then is 0.

``REL`` per accumulation kind (``precision``) and dtype:

* ``None`` (the default: every backend's float32 / float64 arithmetic, float16 accumulated in float32 and
  rounded to float16): float16 2e-3 (a few float16 roundings of the output, 2^-11 each), float32 2e-5,
  float64 1e-12 (sums of up to a few thousand terms, with room for Winograd's transforms).
* ``"tf32"``: float32 on a GPU's tensor cores (``igemm_tc``), compared with ``reference_conv2d_tf32``
  (inputs rounded to TF32 as the kernel rounds them); the hardware's float32 accumulation order inside an
  mma is its own, so 1e-4. (On the emulator the kernel's order is known and the default float32 bound
  applies.) float16 on tensor cores: products exact, float32 accumulation: the default float16 bound.
* ``"pool"``: average pooling (plain and adaptive), a short sum of a window's cells (no products) in
  float32 (float16 input too) or float64, then one division, on every backend: float16 1e-3 (the output's
  rounding to float16, 2^-11 relative, and |expected| <= magnitude here), float32 1e-6, float64 1e-13.

Measured (every default-run comparison, NumPy and emulator, when this model was introduced): the worst
error was 0.24 of the bound for float16 (the output's rounding), 0.08 for float32 (NumPy's Winograd; 0.01
elsewhere), 0.003 for float64; pooling 0.47 / 0.13 / 0.002 of the "pool" bounds.

A support module, like tests/reference.py, tests/cases.py, tests/support.py and tests/runners.py: test
files import helpers only from these, never from another test_*.py file.
"""

from __future__ import annotations

import numpy as np

REL = {
    None: {np.float16: 2e-3, np.float32: 2e-5, np.float64: 1e-12},
    "tf32": {np.float16: 2e-3, np.float32: 1e-4},
    "pool": {np.float16: 1e-3, np.float32: 1e-6, np.float64: 1e-13},
}


def tolerance(dtype, precision=None) -> float:
    """``REL[precision][dtype]``: the bound on |actual - expected| relative to max(magnitude, |expected|)."""
    try:
        return REL[precision][np.dtype(dtype).type]
    except KeyError:
        raise ValueError(f"no tolerance for dtype {np.dtype(dtype).name} at precision {precision!r}") from None


def assert_close(actual, expected, magnitude, dtype, what="", precision=None):
    """Assert the model of this module's docstring: ``|actual - expected| <= tolerance(dtype, precision) *
    max(magnitude, |expected|)`` elementwise, NaN where ``expected`` is NaN (and only there), infinities
    (and results of an infinite magnitude) exactly. ``actual`` in any float dtype; ``expected`` and
    ``magnitude`` float64 arrays of its shape (from tests/reference.py)."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    magnitude = np.broadcast_to(np.asarray(magnitude, dtype=np.float64), expected.shape)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    nan_a, nan_e = np.isnan(actual), np.isnan(expected)
    assert np.array_equal(nan_a, nan_e), (f"{what}: NaN positions differ ({int(nan_a.sum())} NaN in the "
                                          f"result, {int(nan_e.sum())} in the reference)")
    ok = ~nan_e
    a, e, m = actual[ok], expected[ok], magnitude[ok]
    with np.errstate(invalid="ignore"):
        err = np.abs(a - e)
    err[a == e] = 0  # equal infinities
    exact = np.isinf(e) | ~np.isfinite(m)  # bound 0 there
    scale = np.where(exact, 0.0, np.maximum(np.where(exact, 0.0, m), np.abs(e)))
    bound = tolerance(dtype, precision) * scale + 1e-300
    if err.size:
        worst = int(np.argmax(err - bound))
        assert np.all(err <= bound), (f"{what}: max error {err[worst]:.3g} > bound {bound[worst]:.3g} at flat "
                                      f"index {worst} (dtype {np.dtype(dtype).name}, precision {precision})")

