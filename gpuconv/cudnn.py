"""``gpuconv.cudnn``: CuPy 13's ``cupy.cudnn`` (``cupyx.cudnn``) convolution and pooling functions, on our kernels.

CuPy 14 removed ``cupy.cudnn``; code that called it runs again after one changed import::

    from gpuconv import cudnn        # was: from cupy import cudnn

The functions keep CuPy 13's signatures, keyword-only arguments, defaults and return values (checked against
``cupyx/cudnn.pyx`` of CuPy v13.6.0): ``convolution_forward``, ``convolution_backward_data`` and
``convolution_backward_filter`` write into the array passed for the result and return None;
``pooling_forward`` writes ``y`` and returns it; ``pooling_backward`` returns a new ``gx``. Layout NC + 1, 2
or 3 spatial dimensions, chosen by the arrays' ndim; CuPy arrays run our CUDA kernels, NumPy arrays the
NumPy path (so code can be tested without a GPU). docs/cudnn.md is the migration page: the argument
mapping (``auto_tune``, ``tensor_core``, ``deterministic``, layouts) and what is not covered.
"""

from __future__ import annotations

import numpy as np

from . import _backend
from ._geometry import _shape_str, conv_geometry
from ._geometry_nd import conv_nd_geometry

__all__ = ["convolution_forward", "convolution_backward_data", "convolution_backward_filter", "pooling_forward",
           "pooling_backward", "is_available", "CUDNN_POOLING_MAX", "CUDNN_POOLING_AVERAGE_COUNT_INCLUDE_PADDING",
           "CUDNN_POOLING_AVERAGE_COUNT_EXCLUDE_PADDING", "CUDNN_POOLING_MAX_DETERMINISTIC", "CUDNN_CONVOLUTION",
           "CUDNN_CROSS_CORRELATION", "CUDNN_TENSOR_NCHW", "CUDNN_TENSOR_NHWC", "CUDNN_DEFAULT_MATH",
           "CUDNN_TENSOR_OP_MATH", "CUDNN_DATA_FLOAT", "CUDNN_DATA_DOUBLE", "CUDNN_DATA_HALF"]

# cuDNN's enum values, as CuPy 13 defines them (cupy_backends/cuda/libs/cudnn.pxd)
CUDNN_DATA_FLOAT, CUDNN_DATA_DOUBLE, CUDNN_DATA_HALF = 0, 1, 2
CUDNN_DEFAULT_MATH, CUDNN_TENSOR_OP_MATH = 0, 1
CUDNN_TENSOR_NCHW, CUDNN_TENSOR_NHWC = 0, 1
CUDNN_CONVOLUTION, CUDNN_CROSS_CORRELATION = 0, 1
CUDNN_POOLING_MAX = 0
CUDNN_POOLING_AVERAGE_COUNT_INCLUDE_PADDING = 1
CUDNN_POOLING_AVERAGE_COUNT_EXCLUDE_PADDING = 2
CUDNN_POOLING_MAX_DETERMINISTIC = 3

TENSOR_CORE_MODES = ("always", "auto", "never")


def is_available() -> bool:
    """True when the CUDA path is usable here (CuPy installed, a driver and a device); the NumPy path always is."""
    return bool(_backend.backend_info()["cupy"]["available"])


# --------------------------------------------------------------------------------------------
# argument checks
# --------------------------------------------------------------------------------------------

def _layouts(fn, d_layout, w_layout):
    for name, v in (("d_layout", d_layout), ("w_layout", w_layout)):
        if v == CUDNN_TENSOR_NHWC:
            raise NotImplementedError(f"{fn}(): {name}=CUDNN_TENSOR_NHWC (channels-last) is not supported by "
                                      f"gpuconv; pass NC + spatial (CUDNN_TENSOR_NCHW) arrays, e.g. "
                                      f"x.transpose(0, 3, 1, 2) of an NHWC array")
        if v != CUDNN_TENSOR_NCHW:
            raise ValueError(f"{fn}(): {name} must be CUDNN_TENSOR_NCHW ({CUDNN_TENSOR_NCHW}), got {v!r}")


def _tensor_cores_allowed(tensor_core, dtype) -> bool:
    """cuDNN's ``tensor_core`` mode as our tensor-core policy: 'never' none; 'auto' float16 only (as cuDNN,
    where tensor cores served float16 only); 'always' float16, and float32 computed as TF32."""
    if tensor_core not in TENSOR_CORE_MODES:
        raise ValueError(f"tensor_core must be either of 'always', 'auto', or 'never', got {tensor_core!r}")
    if tensor_core == "never":
        return False
    dt = np.dtype(dtype)
    return dt == np.float16 or (tensor_core == "always" and dt == np.float32)


def _algo_policy(auto_tune: bool, tensor_cores: bool):
    """The algorithm choice for each 2-D convolution a call runs on the CUDA path: our autotuner
    (``algo='auto'``) when ``auto_tune`` and the tensor-core policy is the one ``gpuconv.set_tensor_cores``
    set (its candidate set); otherwise ``select``'s heuristic order over the algorithms the policy allows,
    not measured."""
    def choose(geom2d, dtype, rt):
        from ._cuda import select, settings
        if auto_tune and tensor_cores == settings.tensor_cores_enabled():
            return "auto"
        algorithms = select.operation("conv2d").algorithms
        allowed = [name for name, a in algorithms.items() if a.decline_reason(geom2d, dtype) is None
                   and select.device_reason(name, rt) is None and (tensor_cores or not a.tensor_cores)]
        for name in select.conv_forward_order(geom2d, dtype):
            if name in allowed:
                return name
        return "direct"  # declines too: conv2d raises its ValueError
    return choose


def _nd(fn, name, a) -> int:
    if a.ndim not in (3, 4, 5):
        raise ValueError(f"{fn}(): {name} must be 3-, 4- or 5-D (N, C and 1, 2 or 3 spatial dimensions), got "
                         f"{name} of size {_shape_str(a.shape)}")
    return a.ndim - 2


def _tuples(fn, nd, **named):
    """Each argument as a tuple of ``nd`` ints. ``dilation=None`` is ``(1,) * nd``, as CuPy 13's
    ``_create_convolution_descriptor``; lists are accepted too (CuPy's Cython signature took tuples only)."""
    out = []
    for name, v in named.items():
        if v is None and name == "dilation":
            v = (1,) * nd
        if not (isinstance(v, (tuple, list)) and all(isinstance(e, (int, np.integer)) for e in v)):
            raise TypeError(f"{fn}(): {name} must be a tuple of ints, got {v!r}")
        if len(v) != nd:
            raise ValueError(f"{fn}(): {', '.join(named)} must be of same length as the spatial dimensions "
                             f"({nd}), got {name}={tuple(v)!r}")
        out.append(tuple(int(e) for e in v))
    return out


def _output_shape(fn, roles, nd, x_shape, w_shape, pad, stride, dilation, groups):
    """The forward output shape (and every check of the forward call). The checks speak of PyTorch's
    ``input`` / ``weight``; ``roles`` says which of the call's arrays those are (ValueError / TypeError
    prefixed with the function and the roles)."""
    try:
        if nd == 2:
            return conv_geometry(tuple(x_shape), tuple(w_shape), None, stride, pad, dilation, groups).output_shape
        return conv_nd_geometry(nd, tuple(x_shape), tuple(w_shape), None, stride, pad, dilation,
                                groups).output_shape
    except (ValueError, TypeError) as exc:
        raise type(exc)(f"{fn}(): {exc} ({roles})") from None


def _bias(fn, b, n, what):
    """``b`` as the ``(n,)`` vector the ops take. CuPy 13 reshaped ``b`` to ``(1, -1, 1, ...)`` for cuDNN's
    addTensor, so any shape of ``n`` elements was accepted (``(K,)``, ``(1, K, 1, 1)``); so here."""
    if b is None:
        return None
    if b.size != n:
        raise ValueError(f"{fn}(): b must have {n} elements ({what}), got b of shape {_shape_str(b.shape)}")
    return b.reshape(n)


def _out_array(fn, name, out, like, shape, what):
    """``out`` must be an array of ``like``'s kind and dtype, of ``shape``: ValueError naming both otherwise."""
    if not isinstance(out, type(like)):
        raise TypeError(f"{fn}(): {name} must be a {type(like).__module__}.ndarray like the inputs, got "
                        f"{type(out).__name__}")
    if tuple(out.shape) != tuple(shape):
        raise ValueError(f"{fn}(): {name} must have shape {_shape_str(shape)} ({what}), got {name} of shape "
                         f"{_shape_str(out.shape)}")
    if out.dtype != like.dtype:
        raise ValueError(f"{fn}(): {name} must have the inputs' dtype {np.dtype(like.dtype).name}, got {name} "
                         f"of dtype {np.dtype(out.dtype).name}")


def _conv_forward(backend, nd, x, W, b, pad, stride, dilation, groups, algo):
    from . import conv as conv2d_module, conv_nd
    if nd == 2:
        if callable(algo):
            from ._conv_nd import resolve_algo
            g = conv_geometry(tuple(x.shape), tuple(W.shape), None, stride, pad, dilation, groups)
            algo = resolve_algo(backend, g, x.dtype, algo)
        return conv2d_module.conv2d(x, W, b, stride, pad, dilation, groups, algo=algo)
    fn = conv_nd.conv1d if nd == 1 else conv_nd.conv3d
    return fn(x, W, b, stride, pad, dilation, groups, algo=algo)


# --------------------------------------------------------------------------------------------
# convolution
# --------------------------------------------------------------------------------------------

def convolution_forward(x, W, b, y, pad, stride, dilation, groups, *, auto_tune, tensor_core,
                        d_layout=CUDNN_TENSOR_NCHW, w_layout=CUDNN_TENSOR_NCHW):
    """``y[...] = `` the cross-correlation of ``x (N, C, *in)`` with ``W (K, C/groups, *k)`` plus ``b (K,)``
    when not None (``pad``: symmetric per dimension; ``stride``, ``dilation``: tuples of the spatial rank).
    Returns None, as CuPy. ``y`` must be ``(N, K, *out)`` of x's dtype (``ValueError``)."""
    fn = "convolution_forward"
    _layouts(fn, d_layout, w_layout)
    backend, a = _backend.coerce_arrays(fn, optional=("b",), x=x, W=W, b=b)
    x, W, b = a["x"], a["W"], a["b"]
    nd = _nd(fn, "x", x)
    pad, stride, dilation = _tuples(fn, nd, pad=pad, stride=stride, dilation=dilation)
    tc = _tensor_cores_allowed(tensor_core, x.dtype)
    shape = _output_shape(fn, "input = x, weight = W", nd, x.shape, W.shape, pad, stride, dilation, groups)
    b = _bias(fn, b, shape[1], "W's output channels")
    _out_array(fn, "y", y, x, shape, "the convolution's output")
    y[...] = _conv_forward(backend, nd, x, W, b, pad, stride, dilation, groups,
                           _algo_policy(bool(auto_tune), tc))


def convolution_backward_data(W, x, b, y, pad, stride, dilation, groups, *, deterministic, auto_tune, tensor_core,
                              d_layout=CUDNN_TENSOR_NCHW, w_layout=CUDNN_TENSOR_NCHW):
    """``y[...] = `` the gradient, with respect to the input, of the convolution ``y -> x`` with ``W``: ``x`` is
    the output gradient ``(N, K, *out)``, ``y`` receives ``(N, C, *in)`` (its shape gives the input size), plus
    ``b (C,)`` broadcast when not None (a deconvolution's bias, as cuDNN's use). Returns None. Our gradient
    kernels are deterministic, so ``deterministic`` is always met; ``auto_tune`` / ``tensor_core`` are checked
    but the gradient's 2-D calls run the gradients' fixed heuristic (docs/cudnn.md)."""
    fn = "convolution_backward_data"
    _layouts(fn, d_layout, w_layout)
    backend, a = _backend.coerce_arrays(fn, optional=("b",), W=W, x=x, b=b)
    W, gy, b = a["W"], a["x"], a["b"]
    nd = _nd(fn, "x", gy)
    pad, stride, dilation = _tuples(fn, nd, pad=pad, stride=stride, dilation=dilation)
    _tensor_cores_allowed(tensor_core, gy.dtype)
    if not hasattr(y, "shape") or len(y.shape) != nd + 2:
        raise ValueError(f"{fn}(): y must be an array of {nd + 2} dimensions like x, got "
                         f"{getattr(y, 'shape', type(y).__name__)}")
    expected = _output_shape(fn, "input = y, weight = W", nd, y.shape, W.shape, pad, stride, dilation, groups)
    if tuple(gy.shape) != tuple(expected):
        raise ValueError(f"{fn}(): x (the output gradient) must have shape {_shape_str(expected)}, the forward "
                         f"output for y of shape {_shape_str(y.shape)} and W of shape {_shape_str(W.shape)}, got "
                         f"x of shape {_shape_str(gy.shape)}")
    _out_array(fn, "y", y, gy, y.shape, "the input gradient")
    b = _bias(fn, b, y.shape[1], "y's channels")
    from . import grad
    y[...] = getattr(grad, f"conv{nd}d_input")(tuple(y.shape), W, gy, stride, pad, dilation, groups)
    if b is not None:  # one rounding per element, as cuDNN's addTensor (float16: NumPy / CuPy add in float32)
        y += b.reshape((1, -1) + (1,) * nd)


def convolution_backward_filter(x, gy, gW, pad, stride, dilation, groups, *, deterministic, auto_tune, tensor_core,
                                d_layout=CUDNN_TENSOR_NCHW, w_layout=CUDNN_TENSOR_NCHW):
    """``gW[...] = `` the gradient, with respect to the filter, of the convolution of ``x`` (shape of ``gW``:
    ``(K, C/groups, *k)``), given the output gradient ``gy``. Returns None. Deterministic always."""
    fn = "convolution_backward_filter"
    _layouts(fn, d_layout, w_layout)
    backend, a = _backend.coerce_arrays(fn, x=x, gy=gy)
    x, gy = a["x"], a["gy"]
    nd = _nd(fn, "x", x)
    pad, stride, dilation = _tuples(fn, nd, pad=pad, stride=stride, dilation=dilation)
    _tensor_cores_allowed(tensor_core, x.dtype)
    if not hasattr(gW, "shape") or len(gW.shape) != nd + 2:
        raise ValueError(f"{fn}(): gW must be an array of {nd + 2} dimensions (K, C/groups, *kernel), got "
                         f"{getattr(gW, 'shape', type(gW).__name__)}")
    expected = _output_shape(fn, "input = x, weight = gW", nd, x.shape, gW.shape, pad, stride, dilation, groups)
    if tuple(gy.shape) != tuple(expected):
        raise ValueError(f"{fn}(): gy must have shape {_shape_str(expected)}, the forward output for x of shape "
                         f"{_shape_str(x.shape)} and gW of shape {_shape_str(gW.shape)}, got gy of shape "
                         f"{_shape_str(gy.shape)}")
    _out_array(fn, "gW", gW, x, gW.shape, "the filter gradient")
    from . import grad
    gW[...] = getattr(grad, f"conv{nd}d_weight")(x, tuple(gW.shape), gy, stride, pad, dilation, groups)


# --------------------------------------------------------------------------------------------
# pooling
# --------------------------------------------------------------------------------------------

_MODES = {CUDNN_POOLING_MAX: "max", CUDNN_POOLING_MAX_DETERMINISTIC: "max",
          CUDNN_POOLING_AVERAGE_COUNT_INCLUDE_PADDING: "avg_include", CUDNN_POOLING_AVERAGE_COUNT_EXCLUDE_PADDING:
          "avg_exclude"}


def _pool_fn(fn, nd, mode, grad=False):
    """The gpuconv pooling function for ``mode`` in ``nd`` dimensions (its gradient with ``grad``)."""
    import gpuconv
    if mode not in _MODES:
        raise ValueError(f"{fn}(): unknown pooling mode {mode!r}; expected CUDNN_POOLING_MAX, "
                         f"CUDNN_POOLING_AVERAGE_COUNT_INCLUDE_PADDING or CUDNN_POOLING_AVERAGE_COUNT_EXCLUDE_PADDING")
    kind = "max" if _MODES[mode] == "max" else "avg"
    name = f"{kind}_pool{nd}d" + ("_input" if grad else "")
    f = getattr(gpuconv.grad if grad else gpuconv, name)
    return f, _MODES[mode]


def _pool_args(fn, x, ksize, stride, pad):
    nd = _nd(fn, "x", x)
    if not (len(ksize) == len(stride) == len(pad)):
        raise ValueError(f"{fn}(): ksize, stride, and pad must be of same length, got ksize={ksize!r}, "
                         f"stride={stride!r}, pad={pad!r}")
    ksize, stride, pad = _tuples(fn, nd, ksize=ksize, stride=stride, pad=pad)
    # cuDNN pads each side by pad[i] and, unlike PyTorch, does not limit it to half the window: as explicit
    # (low, high) pairs, gpuconv's pooling takes each side up to ksize - 1 (ONNX's rule) with the same windows,
    # output size and divisors as the symmetric form (docs/cudnn.md)
    return nd, (ksize, stride, tuple((p, p) for p in pad))


def pooling_forward(x, y, ksize, stride, pad, mode):
    """``y[...] = `` the pooling of ``x`` (max, or average counting or not the padding: ``mode``); returns ``y``,
    which must be C-contiguous and of the output's shape and x's dtype (``ValueError``)."""
    fn = "pooling_forward"
    _backend.coerce_arrays(fn, x=x)
    nd, (ksize, stride, pad) = _pool_args(fn, x, ksize, stride, pad)
    f, kind = _pool_fn(fn, nd, mode)
    if kind == "max":
        out = f(x, ksize, stride, pad)
    else:
        out = f(x, ksize, stride, pad, count_include_pad=kind == "avg_include")
    _out_array(fn, "y", y, x, out.shape, "the pooling output")
    if not y.flags.c_contiguous:
        raise ValueError("pooling_forward supports c-contiguous y only")
    y[...] = out
    return y


def pooling_backward(x, y, gy, ksize, stride, pad, mode):
    """The gradient of ``pooling_forward`` with respect to ``x``: a new array of x's shape. Max pooling sends
    each output's gradient to the first maximum of its window in ``x`` (row-major, as PyTorch's indices; ``y``
    is checked for its shape, the positions are recomputed from ``x``); average pooling spreads it over the
    window (divisor as the forward)."""
    fn = "pooling_backward"
    _backend.coerce_arrays(fn, x=x, y=y, gy=gy)
    nd, (ksize, stride, pad) = _pool_args(fn, x, ksize, stride, pad)
    f, kind = _pool_fn(fn, nd, mode, grad=True)
    if kind == "max":
        fwd, _ = _pool_fn(fn, nd, mode)
        out, idx = fwd(x, ksize, stride, pad, return_indices=True)
    else:
        fwd, _ = _pool_fn(fn, nd, mode)
        out, idx = fwd(x, ksize, stride, pad, count_include_pad=kind == "avg_include"), None
    for name, a in (("y", y), ("gy", gy)):
        if tuple(a.shape) != tuple(out.shape):
            raise ValueError(f"{fn}(): {name} must have the pooling output's shape {_shape_str(out.shape)}, got "
                             f"{name} of shape {_shape_str(a.shape)}")
    if kind == "max":
        return f(tuple(x.shape), gy, idx, ksize, stride, pad)
    return f(tuple(x.shape), gy, ksize, stride, pad, count_include_pad=kind == "avg_include")
