"""``gpuconv.cudnn``'s pooling functions (CuPy 13's ``cupy.cudnn.pooling_forward`` / ``pooling_backward``) on
the NumPy path and on our CUDA kernels through the emulator (a GPU where there is one), against PyTorch CPU: the
three modes, 1-D / 2-D / 3-D, forward and autograd, with padding up to half the window and beyond it (cuDNN's
limit; against PyTorch on explicitly padded input). Convolutions, the argument mapping and the errors:
tests/test_cudnn.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from gpuconv import cudnn
from tests.runners import torch
from tests.support import BACKEND_KINDS as KINDS, On


# --------------------------------------------------------------------------------------------
# pooling
# --------------------------------------------------------------------------------------------

POOL_MODES = {"max": cudnn.CUDNN_POOLING_MAX, "include": cudnn.CUDNN_POOLING_AVERAGE_COUNT_INCLUDE_PADDING,
              "exclude": cudnn.CUDNN_POOLING_AVERAGE_COUNT_EXCLUDE_PADDING}


POOL_CASES = {1: ((2, 3, 11), (3,), (2,), (1,)), 2: ((2, 3, 7, 8), (3, 2), (2, 2), (1, 1)),
              3: ((1, 2, 5, 6, 7), (3, 2, 3), (2, 2, 1), (1, 0, 1))}


@pytest.mark.skipif(torch is None, reason="PyTorch not installed")
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", list(POOL_MODES))
@pytest.mark.parametrize("nd", [1, 2, 3])
def test_pooling_matches_pytorch(kind, mode, nd):
    import torch.nn.functional as F
    rng = np.random.default_rng(2)
    shape, ksize, stride, pad = POOL_CASES[nd]
    x = rng.standard_normal(shape)
    xt = torch.tensor(x, requires_grad=True)
    if mode == "max":
        yt = getattr(F, f"max_pool{nd}d")(xt, ksize, stride, pad)
    else:
        yt = getattr(F, f"avg_pool{nd}d")(xt, ksize, stride, pad, count_include_pad=mode == "include")
    gy = rng.standard_normal(yt.shape)
    yt.backward(torch.tensor(gy))
    with On(kind) as on:
        y = on.arr(np.empty(yt.shape))
        assert cudnn.pooling_forward(on.arr(x), y, ksize, stride, pad, POOL_MODES[mode]) is y
        np.testing.assert_allclose(on.host(y), yt.detach().numpy(), rtol=1e-12, atol=1e-12)
        gx = cudnn.pooling_backward(on.arr(x), y, on.arr(gy), ksize, stride, pad, POOL_MODES[mode])
        assert gx.shape == x.shape
        np.testing.assert_allclose(on.host(gx), xt.grad.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.skipif(torch is None, reason="PyTorch not installed")
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", list(POOL_MODES))
@pytest.mark.parametrize("nd", [1, 2, 3])
def test_pooling_padding_beyond_half_the_window(kind, mode, nd):
    """cuDNN pads each side by ``pad`` up to ``ksize - 1`` (PyTorch's pooling stops at ``ksize // 2``):
    against PyTorch on input padded explicitly (-inf for max, 0 for the averages; excluding the padding = the
    window sum over the count of input cells), forward and autograd."""
    import torch.nn.functional as F
    rng = np.random.default_rng(20 + nd)
    shape, ksize, stride, pad = {1: ((2, 3, 6), (3,), (2,), (2,)), 2: ((1, 2, 5, 4), (3, 2), (1, 2), (2, 1)),
                                 3: ((1, 2, 3, 4, 5), (2, 3, 3), (1, 2, 2), (1, 2, 2))}[nd]
    x = rng.standard_normal(shape)
    xt = torch.tensor(x, requires_grad=True)
    tp = tuple(p for p in pad[::-1] for _ in range(2))

    def pool2(a, op):  # through 2-D / 3-D: avg_pool1d has no divisor_override
        a = a[:, :, None] if nd == 1 else a
        out = (getattr(F, f"max_pool{max(nd, 2)}d")(a, (1,) * (nd == 1) + ksize, (1,) * (nd == 1) + stride)
               if op == "max" else
               getattr(F, f"avg_pool{max(nd, 2)}d")(a, (1,) * (nd == 1) + ksize, (1,) * (nd == 1) + stride,
                                                   divisor_override=1))
        return out[:, :, 0] if nd == 1 else out

    if mode == "max":
        yt = pool2(F.pad(xt, tp, value=-np.inf), "max")
    else:
        div = pool2(F.pad(torch.ones_like(xt), tp), "sum") if mode == "exclude" else float(np.prod(ksize))
        yt = pool2(F.pad(xt, tp), "sum") / div
    gy = rng.standard_normal(yt.shape)
    yt.backward(torch.tensor(gy))
    with On(kind) as on:
        y = on.arr(np.empty(yt.shape))
        cudnn.pooling_forward(on.arr(x), y, ksize, stride, pad, POOL_MODES[mode])
        np.testing.assert_allclose(on.host(y), yt.detach().numpy(), rtol=1e-12, atol=1e-12)
        gx = cudnn.pooling_backward(on.arr(x), y, on.arr(gy), ksize, stride, pad, POOL_MODES[mode])
        np.testing.assert_allclose(on.host(gx), xt.grad.numpy(), rtol=1e-12, atol=1e-12)
