"""The user's switches for ``algo='auto'`` on the CUDA path: measuring on or off (and the cache file), and
whether tensor-core algorithms may be chosen. Plain state, read by the selection (``select.py``) and the
autotuner (``autotune.py``); nothing here imports either.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

lock = threading.Lock()
_enabled: bool | None = None  # None: read GPUCONV_AUTOTUNE
_tensor_cores: bool | None = None  # None: read GPUCONV_TENSOR_CORES
_cache_file: str | None = None  # None: read GPUCONV_AUTOTUNE_CACHE


def _env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name, "").strip().lower()
    return default if not value else value not in ("0", "false", "no", "off")


def set_autotune(enabled: bool | None = None, *, cache_file: str | os.PathLike | None = None) -> None:
    """Switch measuring for ``conv2d(..., algo='auto')`` on CuPy arrays on or off (``None`` leaves it as
    it is; the default is on unless ``GPUCONV_AUTOTUNE=0``), and optionally set the JSON file that
    keeps choices across processes (``''`` for none; default ``GPUCONV_AUTOTUNE_CACHE``)."""
    global _enabled, _cache_file
    with lock:
        if enabled is not None:
            _enabled = bool(enabled)
        if cache_file is not None:
            _cache_file = os.fspath(cache_file)


def autotune_enabled() -> bool:
    if _enabled is not None:
        return _enabled
    return _env_flag("GPUCONV_AUTOTUNE", True)


def cache_path() -> Path | None:
    name = _cache_file if _cache_file is not None else os.environ.get("GPUCONV_AUTOTUNE_CACHE", "")
    return Path(name).expanduser() if name else None


def set_tensor_cores(enabled: bool | None) -> None:
    """Let ``conv2d(..., algo='auto')`` on CuPy arrays use tensor-core kernels (``igemm_tc``: float32
    computed as TF32, about 1e-3 relative precision, as PyTorch's default ``allow_tf32`` for convolutions;
    float16 with float32 accumulation). Off by default (``GPUCONV_TENSOR_CORES=1`` switches it on);
    ``None`` goes back to the environment variable. ``algo='igemm_tc'`` runs them whatever this says."""
    global _tensor_cores
    with lock:
        _tensor_cores = None if enabled is None else bool(enabled)


def tensor_cores_enabled() -> bool:
    if _tensor_cores is not None:
        return _tensor_cores
    return _env_flag("GPUCONV_TENSOR_CORES", False)
