"""The peer, PyTorch: importing it, its TF32 switches (the legacy and the PyTorch 2.9+ API, never mixed),
and which of its kernels a convolution runs on (cuDNN or one of PyTorch's own)."""

from __future__ import annotations

from .suite import Case


def import_torch(kind: str):
    """``(torch, None)``, or ``(None, why the peer is missing)``. On a GPU, torch must see CUDA."""
    try:
        import torch
    except ImportError:
        return None, "PyTorch is not installed (pip install torch): ours ran alone"
    if kind == "gpu" and not torch.cuda.is_available():
        return None, f"PyTorch {torch.__version__} has no usable CUDA device: ours ran alone"
    return torch, None


def _tf32_api(torch) -> str:
    """Which of PyTorch's TF32 switches to use: ``'precision'`` (``torch.backends.cudnn.conv.fp32_precision``
    and ``torch.backends.cuda.matmul.fp32_precision``, PyTorch 2.9 and newer) or ``'allow'`` (the legacy
    ``allow_tf32`` flags). Never both: once the new API has set a flag, reading a legacy one raises
    ("a mix of the legacy and new APIs")."""
    conv = getattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision", None)
    matmul = getattr(torch.backends.cuda.matmul, "fp32_precision", None)
    return "precision" if conv is not None and matmul is not None else "allow"


def tf32_state(torch) -> tuple:
    """PyTorch's TF32 switches for convolutions and matmuls as they are now, read through the API
    ``_tf32_api`` picks, for ``restore_tf32_state``."""
    if _tf32_api(torch) == "precision":
        return ("precision", torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision)
    return ("allow", torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)


def restore_tf32_state(torch, state: tuple) -> None:
    api, conv, matmul = state
    if api == "precision":
        torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision = conv, matmul
    else:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = conv, matmul


def set_tf32(torch, on: bool) -> None:
    """TF32 on or off for PyTorch's convolutions and matmuls, through the one API ``_tf32_api`` picks."""
    if _tf32_api(torch) == "precision":
        torch.backends.cudnn.conv.fp32_precision = torch.backends.cuda.matmul.fp32_precision = \
            "tf32" if on else "ieee"
    else:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = bool(on)


def torch_conv_backend(torch, case: Case, tx, tw) -> str | None:
    """The convolution backend PyTorch picks for this call (``'Cudnn'``, ``'CudaDepthwise2d'``, ``'Mkldnn'``,
    ...), asked of PyTorch itself (``torch._C._select_conv_backend``, the dispatcher ``F.conv1d/2d/3d`` use);
    None for pooling or when this PyTorch cannot say."""
    select_backend = getattr(torch._C, "_select_conv_backend", None)
    if not case.is_conv or select_backend is None:
        return None
    s, p, d = list(case.strides), list(case.pads), list(case.dilations)
    try:
        backend = select_backend(tx, tw, None, s, p, d, False, [0] * case.dims, case.groups, None)
    except Exception:  # a private API: another signature in another PyTorch version
        return None
    return str(backend).rsplit(".", 1)[-1]


def peer_label(plat, case: Case, tx, tw) -> str:
    """The peer's name for one case. On a GPU a convolution's peer is cuDNN unless PyTorch routes the call to
    a kernel of its own: its float32 depthwise convolutions run ``CudaDepthwise2d``, not cuDNN."""
    if plat.kind != "gpu" or not case.is_conv:
        return plat.peer_label
    backend = torch_conv_backend(plat.torch, case, tx, tw)
    if backend is None or backend.startswith("Cudnn"):
        return plat.peer_label
    return f"PyTorch {backend}"
