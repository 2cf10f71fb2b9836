"""Convolution gradients lowered onto the forward convolution both backends already have (issue 17, first
step; dedicated backward kernels come later). docs/gradients.md has the rules; this module the arithmetic.

On NumPy arrays ``backward_data`` / ``backward_filter`` first ask ``gpuconv._numpy.conv_grad`` (im2col /
col2im with BLAS GEMMs, and dot products over phase planes for depthwise filter gradients, chosen by its
``data_strategy`` / ``filter_strategy`` / ``depthwise_filter_applies``); the lowering below runs where those
say no (1x1 and depthwise backward data, Winograd-sized 3x3 layers, a workspace too small for one row). On
the CUDA path ``backward_filter`` runs the dedicated kernels of ``gpuconv/_cuda/conv_backward_filter.py``
(``cuda_filter_algo``; the lowering only where they decline: ``N*P*Q`` past their 32-bit rule);
``backward_data`` runs ``conv2d_backward_data`` (``gpuconv/_cuda/conv_backward_data.py``: every stride phase
below in ONE launch, with ``out`` the activation's derivative applied in its gather), and this lowering only
where that kernel declines (its 32-bit rule; the record's first entry says why).

Everything here works on validated arrays and a resolved forward ``ConvGeometry`` (``gpuconv._geometry``):
the public functions (``gpuconv._grad_conv``) check the user's arguments once. Notation as in
docs/semantics.md: ``x (N, C, H, W)``, ``w (K, Cg, R, S)``, ``gy (N, K, P, Q)``, groups ``G``,
``Kg = K/G``, explicit padding ``pt, pb, pl, pr``. ``flip=True`` (true convolution) is cross-correlation
with ``w_eff = w`` rotated by 180 degrees, so both lowerings work on ``w_eff`` and a filter gradient is
rotated back at the end.

* Backward filter, ``gw[k, c, r, s] = sum_{n,p,q} x[n, g*Cg + c, p*sh - pt + r*dh, q*sw - pl + s*dw] *
  gy[n, k, p, q]``: ONE forward correlation with the roles swapped, input ``x`` as ``(Cg, G*N, H, W)``
  (batch = channels of a group, channels = (group, sample)), weight ``gy`` as ``(K, N, P, Q)``, ``groups=G``,
  stride = the forward dilation, dilation = the forward stride, padding top / left = the forward's; the
  bottom / right padding (and the input rows / columns) are cut to what the last tap reads, so the result
  is exactly ``(Cg, K, R, S)``, transposed to ``(K, Cg, R, S)``.
* Backward data: the stride-phase ("sub-pixel") decomposition. Input rows ``h = a + sh*i`` of phase ``a``
  (``0 <= a < sh``) receive only the taps ``r`` with ``(a + pt - r*dh) % sh == 0``: ``r = r0 + j*m``
  (``m = sh/gcd(sh, dh)``) reading ``gy`` row ``i + o0 - j*dd`` (``dd = dh/gcd(sh, dh)``, ``o0 = (a + pt -
  r0*dh)/sh``), which is a stride-1 correlation of ``gy`` with those taps in reverse order, dilation ``dd``,
  padding top ``(J-1)*dd - o0`` (negative padding crops ``gy`` instead). One forward call per pair of row
  and column phases (``sh*sw`` calls; one at stride 1, where it is the familiar "correlate with the filter
  rotated by 180 degrees, padding ``dh*(R-1) - pt``"); no zero insertion. A phase without taps stays zero.

Memory beyond the result: backward data, one phase's output (about ``|gx| / (sh*sw)``) and the phase's
sub-filter; a cropped ``gy`` is a view (the CUDA launch copies a non-contiguous one, ``|gy|`` at most); the
CUDA kernel instead: its packed sub-filters (``|w|`` at most) and contiguous copies of a non-contiguous
``gy`` / ``out``.
Backward filter, a transposed copy of ``x`` (cut to the rows and columns read) and of ``gy`` (none on the
NumPy path for depthwise-like float32 / float64 layers, ``depthwise_filter_numpy``). Plus the
forward call's own workspace (the NumPy path: ``GPUCONV_NUMPY_WORKSPACE_MB``).

Determinism: on the CUDA path the algorithm is the heuristic's (``select.choose_algo``), never the
autotuner's measurement (which could pick another algorithm in another process); each forward kernel
computes an output in one thread in a fixed order, and the phase scatter is a plain copy, so equal inputs
give bitwise-equal gradients (``conv2d_backward_data`` likewise: one thread per ``gx`` element).
"""

from __future__ import annotations

import math

from ._backend import CudaBackend
from ._geometry import ConvGeometry, conv_geometry, tap_outputs


def forward(backend, x, w, stride, padding, dilation, groups):
    """``backend``'s forward correlation of ``x`` with ``w`` (no bias, no activation, no flip), arguments
    in explicit form. Returns ``(y, kernel_id)``. On the CUDA path the algorithm is the heuristic's, by
    name: never measured, so the same call runs the same kernel in every process."""
    g = conv_geometry(tuple(x.shape), tuple(w.shape), None, stride, padding, dilation, groups)
    algo = "auto"
    if isinstance(backend, CudaBackend):
        from ._cuda.select import choose_algo
        algo = choose_algo(g, x.dtype, backend.runtime)
    return backend.conv2d(x, w, None, g, algo)


def effective_weight(w, geom: ConvGeometry):
    """The weight the forward call correlates with: ``w`` itself, or rotated by 180 degrees (``flip``)."""
    return w[:, :, ::-1, ::-1] if geom.flip else w


# --------------------------------------------------------------------------------------------
# backward data
# --------------------------------------------------------------------------------------------

def axis_phases(size, n_out, k, s, p_lo, d):
    """The phases of one axis for backward data: input length ``size``, ``gy`` length ``n_out``, kernel
    ``k``, stride ``s``, low padding ``p_lo``, dilation ``d``. Returns a list of ``(a, taps, dd, lo, hi,
    start, stop)``: input positions ``a::s`` are the stride-1 correlation of ``gy[start:stop]`` (padded by
    ``lo`` / ``hi``) with the filter taps ``taps`` (already in the order the correlation reads them),
    dilation ``dd``. Phases that receive nothing (no tap, or only reads past ``gy``) are left out."""
    m, dd = s // math.gcd(s, d), d // math.gcd(s, d)
    phases = []
    for a in range(min(s, size)):
        count = (size - a + s - 1) // s
        taps = [r for r in range(k) if (a + p_lo - r * d) % s == 0]
        if not taps:
            continue
        assert all(t - taps[0] == j * m for j, t in enumerate(taps))
        o0 = (a + p_lo - taps[0] * d) // s
        span = (len(taps) - 1) * dd
        lo = span - o0
        hi = count - n_out - lo + span
        start, stop = max(-lo, 0), n_out + min(hi, 0)
        if stop <= start:
            continue
        phases.append((a, taps[::-1], dd, max(lo, 0), max(hi, 0), start, stop))
    return phases


def _phase_calls(gy, geom: ConvGeometry, H: int, W: int):
    """The phase calls of backward data: ``(a, b, rows, cols, taps, padding, dilation)`` per pair of row
    and column phases with taps: input positions ``a::sh, b::sw`` are the correlation of ``gy[:, :, rows,
    cols]`` with the effective filter's taps ``taps = (rtaps, ctaps)``, stride 1, padding and dilation as
    given."""
    Pg, Qg = gy.shape[2:]
    rows = axis_phases(H, Pg, geom.R, geom.sh, geom.pt, geom.dh)
    cols = axis_phases(W, Qg, geom.S, geom.sw, geom.pl, geom.dw)
    for a, rtaps, rd, rlo, rhi, r0, r1 in rows:
        for b, ctaps, cd, clo, chi, c0, c1 in cols:
            yield a, b, slice(r0, r1), slice(c0, c1), (rtaps, ctaps), ((rlo, rhi), (clo, chi)), (rd, cd)


def fused_data_reason(gy, geom: ConvGeometry, H: int, W: int) -> str | None:
    """None when ``backward_data(..., out=...)`` can apply the activation's derivative inside
    ``conv2d_backward_data`` (CUDA path), else why not (its 32-bit rule declines); the caller then runs the
    pre-pass and says so in the record."""
    from ._cuda.conv_backward_data import decline_reason
    return decline_reason(geom, gy.dtype)


def backward_data(backend, gy, w, geom: ConvGeometry, H: int, W: int, out=None):
    """``gx (N, C, H, W)`` from ``gy (N, K, Pg, Qg)`` (``Pg <= geom.P`` is allowed: a transposed convolution
    with ``output_padding >= stride`` has rows no output reads). Returns ``(gx, kernel_ids)``.

    On CUDA arrays ``conv2d_backward_data`` computes every phase in one launch; where it declines (its 32-bit
    rule) the phase calls below run on the forward kernels and the first kernel id says why.

    ``out`` (CUDA arrays only; ``geom.activation`` set): the activated forward output, ``gy``'s shape; the
    kernel multiplies the gathered ``gy`` by the activation's derivative computed from ``out``
    (``fused_data_reason`` must be None)."""
    xp = backend.xp
    N, K, Pg, Qg = gy.shape
    if out is not None and not (isinstance(backend, CudaBackend) and geom.activation is not None):
        raise ValueError("backward_data: out (a fused activation derivative) is only taken by the CUDA path, "
                         "with an activation")
    notes = []
    if isinstance(backend, CudaBackend):
        from ._cuda.conv_backward_data import decline_reason, launch
        reason = decline_reason(geom, gy.dtype)
        if reason is None:
            return launch(backend.runtime, gy, w, out, geom, H, W)
        if out is not None:
            raise ValueError(f"backward_data: out given, but {reason}")
        notes.append(f"conv2d backward-data phase lowering ({reason})")
    else:
        from ._numpy import conv_grad
        if conv_grad.data_strategy(geom, gy.dtype, H, W, Pg, Qg):
            gx, kernel = conv_grad.backward_data(gy, w, geom, H, W)
            return gx, [kernel]
    G, Kg, Cg = geom.groups, geom.Kg, geom.Cg
    we = effective_weight(w, geom)
    calls = list(_phase_calls(gy, geom, H, W))
    single = geom.sh == 1 and geom.sw == 1 and len(calls) == 1
    gx = None if single else xp.zeros((N, G * Cg, H, W), dtype=gy.dtype)
    kernels = notes
    for a, b, rs, cs, (rtaps, ctaps), pad, dil in calls:
        sub = we[:, :, rtaps][:, :, :, ctaps]  # (K, Cg, J, Jc), fancy indexing: a copy
        sub = sub.reshape(G, Kg, Cg, len(rtaps), len(ctaps)).transpose(0, 2, 1, 3, 4)
        sub = xp.ascontiguousarray(sub.reshape(G * Cg, Kg, len(rtaps), len(ctaps)))
        y, kernel = forward(backend, gy[:, :, rs, cs], sub, 1, pad, dil, G)
        kernels.append(kernel)
        if single:
            return y, kernels
        gx[:, :, a::geom.sh, b::geom.sw] = y
    return gx, kernels


# --------------------------------------------------------------------------------------------
# backward filter
# --------------------------------------------------------------------------------------------

def _read_extent(size, n_out, k, s, p_lo, d):
    """``(used, p_hi)``: input positions ``[0, used)`` are the ones the forward windows read (the rest is
    never read), and ``p_hi`` the high padding that lets the swapped correlation produce exactly ``k``
    taps. ``used <= 0``: every tap reads padding (the gradient is zero)."""
    need = (n_out - 1) * s + (k - 1) * d + 1  # padded positions the windows span
    used = min(size, need - p_lo)
    return used, need - p_lo - used


def depthwise_filter_numpy(x, gy, geom: ConvGeometry):
    """The NumPy path's filter gradient of a depthwise-like convolution (one input channel per filter,
    float32 / float64): per filter tap one ``einsum`` over strided views of ``x`` and ``gy``, ``gw[c*Kg + j, 0,
    r, s] = sum_{n,p,q} x[n, c, p*sh - pt + r*dh, q*sw - pl + s*dw] * gy[n, c*Kg + j, p, q]``, the outputs
    whose tap reads padding left out (they add 0). No copy of either operand; a fixed summation order per
    tap (deterministic). The swapped-role forward call would be an R x S-output convolution with a P x Q
    "filter", which the NumPy strategies run slowly (about 20x slower for MobileNet's layers)."""
    import numpy as np
    N, C = x.shape[:2]
    Kg, R, S = geom.Kg, geom.R, geom.S
    gy5 = gy.reshape(N, C, Kg, geom.P, geom.Q)
    gw = np.zeros((C, Kg, R, S), dtype=gy.dtype)
    for r in range(R):
        p0, p1, h0 = tap_outputs(0, geom.P, 0, geom.H, r * geom.dh - geom.pt, geom.sh)
        for s in range(S):
            q0, q1, w0 = tap_outputs(0, geom.Q, 0, geom.W, s * geom.dw - geom.pl, geom.sw)
            if p1 == p0 or q1 == q0:
                continue
            xs = x[:, :, h0:h0 + (p1 - p0 - 1) * geom.sh + 1:geom.sh, w0:w0 + (q1 - q0 - 1) * geom.sw + 1:geom.sw]
            gw[:, :, r, s] = np.einsum("ncpq,ncjpq->cj", xs, gy5[:, :, :, p0:p1, q0:q1])
    gw = gw.reshape(C * Kg, 1, R, S)
    return np.ascontiguousarray(gw[:, :, ::-1, ::-1]) if geom.flip else gw


def cuda_filter_algo(backend, geom: ConvGeometry, dtype) -> str | None:
    """The CUDA backward-filter algorithm for this call (``gpuconv/_cuda/conv_backward_filter.py``: the
    operation table's order, ``depthwise`` then ``igemm``), or None: not the CUDA path, or every algorithm
    declines (the 32-bit rule, ``N*P*Q`` included), where the swapped forward call runs instead."""
    if not isinstance(backend, CudaBackend):
        return None
    from ._cuda.select import choose_algo, decline_reason
    algo = choose_algo(geom, dtype, backend.runtime, "conv2d", "backward_filter")
    return None if decline_reason(algo, geom, dtype, "conv2d", "backward_filter") else algo


def backward_filter(backend, x, gy, geom: ConvGeometry, out=None):
    """``gw (K, Cg, R, S)`` from ``x (N, C, H, W)`` and ``gy (N, K, P, Q)``, ``N > 0``. Returns ``(gw,
    kernel_id)``; ``kernel_id`` is None when every tap reads padding (zeros, nothing ran).

    ``out``: the activated forward output, whose activation (``geom.activation``) has its derivative applied
    to ``gy`` inside the CUDA kernel; only where ``cuda_filter_algo`` names one (the caller multiplies
    ``gy`` itself elsewhere)."""
    xp = backend.xp
    N, C, H, W = x.shape
    G, Cg, K = geom.groups, geom.Cg, geom.K
    hu, pb = _read_extent(H, geom.P, geom.R, geom.sh, geom.pt, geom.dh)
    wu, pr = _read_extent(W, geom.Q, geom.S, geom.sw, geom.pl, geom.dw)
    if hu <= 0 or wu <= 0:
        return xp.zeros((K, Cg, geom.R, geom.S), dtype=gy.dtype), None
    algo = cuda_filter_algo(backend, geom, x.dtype)
    if algo is not None:
        from ._cuda.ops import operation
        return operation("conv2d", "backward_filter").algorithms[algo].launch(backend.runtime, x, gy, out, geom)
    if out is not None:
        raise ValueError("backward_filter: out (a fused activation) is only taken by the CUDA kernels")
    if not isinstance(backend, CudaBackend):
        from ._numpy import conv_grad
        if conv_grad.filter_strategy(geom, x.dtype):
            return conv_grad.backward_filter(x, gy, geom)
        if conv_grad.depthwise_filter_applies(geom, x.dtype):
            gw = conv_grad.depthwise_filter(x, gy, geom)
            if gw is not None:
                return gw, "numpy_depthwise_filter_planes"
        if geom.Cg == 1 and x.dtype.itemsize >= 4:
            return depthwise_filter_numpy(x, gy, geom), "numpy_depthwise_filter_taps"
    xt = x[:, :, :hu, :wu].reshape(N, G, Cg, hu, wu).transpose(2, 1, 0, 3, 4)
    xt = xp.ascontiguousarray(xt).reshape(Cg, G * N, hu, wu)
    gyt = xp.ascontiguousarray(gy.transpose(1, 0, 2, 3))  # (K, N, P, Q)
    y, kernel = forward(backend, xt, gyt, (geom.dh, geom.dw), ((geom.pt, pb), (geom.pl, pr)),
                        (geom.sh, geom.sw), G)  # (Cg, K, R, S)
    gw = y.transpose(1, 0, 2, 3)
    if geom.flip:
        gw = gw[:, :, ::-1, ::-1]
    return xp.ascontiguousarray(gw), kernel
