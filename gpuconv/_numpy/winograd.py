"""Winograd F(2x2, 3x3) for the NumPy path's ``numpy_winograd`` strategy (3x3 filters, stride 1, no
dilation).

Each 2x2 block of outputs is computed from the 4x4 input tile under it (Lavin & Gray, "Fast Algorithms
for Convolutional Neural Networks", 2016)::

    Y = Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A

where ``g`` is the 3x3 filter and ``d`` the tile. Summed over input channels, the elementwise product
becomes 16 GEMMs, one per tile position ``(a, b)``: ``M[a, b] (Kg, tiles) = U[a, b] (Kg, Cg) @ V[a, b]
(Cg, tiles)``: 16 multiplies per 2x2 outputs instead of 36, so 2.25x fewer GEMM flops than im2col. The
transforms of input and output are a few additions and subtractions over whole arrays (every entry of
``Bᵀ`` and ``Aᵀ`` is 0 or +-1; ``G``'s are 0, 1 or 1/2, so ``U`` too is computed without rounding beyond
the sums').

Accuracy: the transforms sum up to 4 (input) and 9 (output) terms, so the rounding error is a small
multiple of im2col's (same order as the sum of the absolute values of the terms); float16 is computed in
float32 as everywhere on this path. Infinities are different: one ``inf`` in a tile enters several
transformed values with both signs and the output transform then computes ``inf - inf = NaN`` where a
direct convolution gives ``inf``; the caller therefore runs Winograd only on finite input and weight.

Layouts (``TP x TQ`` tiles per image, ``n`` samples of a chunk). Every array holds ``TQ + 1`` tile
columns per tile row, the last one junk: that makes each pass below one long contiguous run instead of
``TQ``-long runs (NumPy's per-run overhead made the short runs the slowest step); the junk column reads
past the end of its row into the next one, is computed like the rest, and is never stored.

* ``planes`` (n, C, 2, 2, TP+1, TQ+1): the zero-padded image split into its four stride-2 phases (row
  parity, column parity), ``PhasePlanes`` with strides ``(2, 2)``: row ``i`` of tile row ``ty`` is
  padded row ``2*ty + i`` = phase ``i % 2``, phase row ``ty + i // 2``; columns likewise;
* ``t`` (4, 2, C, n, TP, TQ+1): the row pass (``Bᵀ d``), per column parity;
* ``V`` (4, 4, C, n, TP, TQ+1) = per tile position ``(groups, Cg, n*TP*(TQ+1))``, the GEMMs' right
  operand; ``M`` (4, 4, K, n, TP, TQ+1), the GEMMs' output.
"""

from __future__ import annotations

import numpy as np

# Bᵀ, G and Aᵀ of F(2x2, 3x3); the passes below hard-code Bᵀ and Aᵀ (see input_transform and
# output_transform), G is applied as a matrix.
B_T = ((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1))
G = ((1, 0, 0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0, 0, 1))
A_T = ((1, 1, 1, 0), (0, 1, -1, -1))


def tile_counts(P: int, Q: int) -> tuple[int, int]:
    """Tiles per column and per row: each tile makes 2x2 outputs (the last row / column of tiles may
    make one more than the output has; it is computed and never stored)."""
    return -(-P // 2), -(-Q // 2)


def padded_extent(TP: int, TQ: int) -> tuple[int, int]:
    """Padded rows and columns the tiles read: tile ``(ty, tx)`` reads rows ``2ty .. 2ty+3`` and
    columns ``2tx .. 2tx+3`` (so the phase planes are ``TP+1`` by ``TQ+1``)."""
    return 2 * TP + 2, 2 * TQ + 2


def weight_transform(w: np.ndarray, groups: int) -> np.ndarray:
    """``U[a, b] = (G g Gᵀ)[a, b]`` for every filter ``g = w[k, c]``: ``w`` (K, Cg, 3, 3) -> U (16,
    groups, Kg, Cg), C-contiguous, one small GEMM with ``kron(G, G)`` (16 x 9)."""
    K, Cg = w.shape[:2]
    g_kron = np.kron(np.array(G, w.dtype), np.array(G, w.dtype))  # [(a, b), (r, s)] = G[a, r] G[b, s]
    return (g_kron @ w.reshape(K * Cg, 9).T).reshape(16, groups, K // groups, Cg)


def input_transform(planes: np.ndarray, t: np.ndarray, V: np.ndarray) -> None:
    """``V[a, b] = (Bᵀ d B)[a, b]`` for every tile ``d``, separably: rows, then columns.

    ``planes`` (n, C, 2, 2, TP+1, TQ+1), ``t`` (4, 2, C, n, TP, TQ+1) scratch, ``V`` (4, 4, C, n, TP,
    TQ+1) out (see the layouts above)."""
    TP = t.shape[4]
    # Rows: tile row i = phase row i // 2 of row parity i % 2; (TP, TQ+1) stays one contiguous run.
    d = [planes[:, :, i % 2, :, i // 2:i // 2 + TP].transpose(2, 1, 0, 3, 4) for i in range(4)]
    np.subtract(d[0], d[2], out=t[0])  # Bᵀ row 0: ( 1, 0, -1,  0)
    np.add(d[1], d[2], out=t[1])       # Bᵀ row 1: ( 0, 1,  1,  0)
    np.subtract(d[2], d[1], out=t[2])  # Bᵀ row 2: ( 0, -1, 1,  0)
    np.subtract(d[1], d[3], out=t[3])  # Bᵀ row 3: ( 0, 1,  0, -1)
    # Columns: tile column j of tile tx = column tx + j // 2 of parity j % 2. Over the flattened arrays
    # that is one shifted run of L values per (a, parity); the last value of V (a junk tile) is set to 0.
    flat = t.reshape(4, 2, -1)
    L = flat.shape[2] - 1
    e = [flat[:, j % 2, j // 2:j // 2 + L] for j in range(4)]
    v = V.reshape(4, 4, -1)
    np.subtract(e[0], e[2], out=v[:, 0, :L])
    np.add(e[1], e[2], out=v[:, 1, :L])
    np.subtract(e[2], e[1], out=v[:, 2, :L])
    np.subtract(e[1], e[3], out=v[:, 3, :L])
    v[:, :, L] = 0


def output_transform(M: np.ndarray, s: np.ndarray, out: np.ndarray):
    """Yield ``(a, b, Y_ab)`` for the four outputs ``Y = Aᵀ M A`` of every tile: ``Y_ab`` (K, n, TP,
    TQ+1) is output row ``2*ty + a``, column ``2*tx + b`` of tile ``(ty, tx)``, computed into ``out`` and
    valid until the next item.

    ``M`` (4, 4, K, n, TP, TQ+1): the GEMMs' output; ``s`` (2, 4, K, n, TP, TQ+1): scratch for the row
    pass."""
    np.add(M[0], M[1], out=s[0])  # Aᵀ row 0: (1, 1,  1,  0)
    s[0] += M[2]
    np.subtract(M[1], M[2], out=s[1])  # Aᵀ row 1: (0, 1, -1, -1)
    s[1] -= M[3]
    for a in range(2):
        np.add(s[a, 0], s[a, 1], out=out)
        out += s[a, 2]
        yield a, 0, out
        np.subtract(s[a, 1], s[a, 2], out=out)
        out -= s[a, 3]
        yield a, 1, out
