"""``gpuconv.conv2d``: the public convolution entry point (shared by the NumPy and CUDA paths)."""

from __future__ import annotations

from . import _backend
from ._geometry import conv_geometry


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, flip=False,
           activation=None, algo="auto"):
    """2-D convolution (cross-correlation, as ``torch.nn.functional.conv2d``), NCHW.

    ``out[n, k, p, q] = bias[k] + sum_{c, r, s} input[n, g*C/groups + c, p*sh - pt + r*dh, q*sw - pl + s*dw]
    * weight[k, c, r, s]`` where ``g = k // (K/groups)`` and out-of-range input reads as 0; then
    ``activation``. Output size ``P = floor((H + pt + pb - dh*(R-1) - 1) / sh) + 1``, likewise ``Q``.

    Args:
        input: ``(N, C, H, W)`` or unbatched ``(C, H, W)``; N may be 0. NumPy arrays run the NumPy path,
            CuPy arrays (or any CUDA array CuPy wraps zero-copy, e.g. a PyTorch CUDA tensor) run the
            CUDA kernels and return a CuPy array. Anything else (None, a list, a scalar) is a
            ``TypeError`` naming the argument and the type received; nothing is converted.
        weight: ``(K, C/groups, R, S)``, same dtype as ``input``; no dimension may be 0 (``ValueError``;
            for zero input channels PyTorch 2.13 returns an output of shape ``(N, 0, P, Q)``, with 0
            channels instead of K, which we do not copy).
        bias: ``(K,)`` or None.
        stride, dilation: int or ``(h, w)``, positive.
        padding: int, ``(h, w)``, ``((top, bottom), (left, right))``, ``'valid'`` (no padding) or
            ``'same'``; entries non-negative ints (a one-element sequence, which PyTorch expands, is a
            ``TypeError``, as for ``stride`` and ``dilation``). ``'same'`` with stride 1 is PyTorch's total,
            ``d*(k-1)``: output size = input size. With stride > 1 (which PyTorch rejects) it is
            TensorFlow/JAX ``SAME``: output ``ceil(H/s)``, total ``max((out-1)*s + d*(k-1) + 1 - H, 0)``.
            An odd total puts its extra pixel at the bottom/right for cross-correlation (``flip=False``,
            as PyTorch and ``scipy.signal.correlate2d(mode='same')``) and at the top/left for true
            convolution (``flip=True``, as ``scipy.signal.convolve2d(mode='same')``, NumPy's ``convolve``
            and MATLAB's ``conv2``: rotating the kernel moves its centre), for every stride; e.g. a 5x4
            kernel pads ``((2, 2), (1, 2))`` for correlation, ``((2, 2), (2, 1))`` for convolution.
            SciPy's ``mode='full'`` is ``padding=((dh*(R-1),) * 2, (dw*(S-1),) * 2)``. See
            docs/semantics.md, "padding='same'".
        groups: C and K must both be divisible by it; ``groups == C`` is depthwise.
        flip: False (default) is cross-correlation like PyTorch; True computes true convolution (the
            kernel rotated by 180 degrees, as ``scipy.signal.convolve2d``), 'same' padding included.
        activation: None, ``'relu'``, ``'leaky_relu'`` (slope 0.01), ``'sigmoid'`` or ``'tanh'``,
            applied after the bias (fused into the kernel on the GPU). NaN propagates through each.
        algo: ``'auto'``, or for CuPy arrays a specific CUDA algorithm (``gpuconv._cuda.ops.OPERATIONS``:
            ``'direct'``, ``'tiled'``, and the faster ones as they land). An algorithm that cannot handle
            the call raises ``ValueError``; nothing falls back silently. On CuPy arrays ``'auto'``
            measures the algorithms that accept the call once per shape, dtype and device and keeps the
            fastest (``gpuconv.set_autotune``, ``gpuconv.autotune_choices``); with measuring off, a
            documented heuristic decides (``gpuconv._cuda.select.choose_algo``). ``gpuconv.last_kernel()``
            tells which kernel ran. Tensor cores are opt-in: ``'igemm_tc'`` (compute capability 8.0 or
            newer) computes float32 as TF32 (inputs and weights rounded to 10 mantissa bits, about 1e-3
            relative precision, as PyTorch with ``allow_tf32``) and float16 with float32 accumulation;
            ``'auto'`` considers it only after ``gpuconv.set_tensor_cores(True)``.

    dtypes: float16, float32, float64; the output has the input's dtype; float16 accumulates in float32.
    NaN and Inf propagate as IEEE arithmetic does, with no NumPy warnings. Padding is a zero that is
    multiplied like any input value, on every path and by every kernel: an infinite weight over a
    padded position gives NaN (``0 * inf``), as in PyTorch's dense CPU convolution. (PyTorch itself
    differs between its kernels here: its depthwise CPU kernel skips padded taps and gives a finite
    value.) docs/semantics.md has every rule, and every difference from PyTorch and SciPy.

    Results agree with the direct sum to rounding, not bit for bit: the strategy (GEMM blocking, and on
    NumPy arrays Winograd F(2x2, 3x3) for wide 3x3 layers, used only when input and weight are finite)
    changes the order of the additions.
    """
    backend, a = _backend.coerce_arrays("conv2d", optional=("bias",), input=input, weight=weight, bias=bias)
    x, w, b = a["input"], a["weight"], a["bias"]
    g = conv_geometry(x.shape, w.shape, None if b is None else b.shape, stride, padding, dilation, groups,
                      flip, activation)
    if algo != "auto":  # only a named algorithm needs the CUDA table (NumPy calls never load it otherwise)
        from ._cuda.conv import check_algo
        check_algo(algo)
    batched = x.ndim == 4
    x4 = x if batched else x[None]
    if g.N == 0:
        y, kernel = backend.xp.empty(g.output_shape, dtype=x.dtype), "none (empty output)"
    else:
        y, kernel = backend.conv2d(x4, w, b, g, algo)
    _backend.record("conv2d", backend.name, kernel)
    return y if batched else y[0]
