"""``algo='auto'`` for conv2d on the GPU: measure every algorithm that accepts the call, once per shape,
dtype and device, and keep the fastest (as ``torch.backends.cudnn.benchmark`` does).

* The first call of a shape runs each candidate (``conv.candidates``) once to compile and warm it, then
  ``REPEATS`` more times between CUDA events on the current stream, and keeps the minimum; the call's
  output comes from the winner, run once more afterwards. Later calls of that shape look the choice up.
* Choices live in memory per process; with a cache file (``set_autotune(cache_file=...)`` or the
  environment variable ``GPUCONV_AUTOTUNE_CACHE``) they are also written to and read from a JSON file,
  keyed on the device's name and compute capability and gpuconv's version.
* Measuring is on by default; ``set_autotune(False)`` or ``GPUCONV_AUTOTUNE=0`` switches it off, and a
  runtime that cannot time kernels (the tests' CPU emulator) never measures: ``conv.choose_algo``'s
  documented heuristic decides then, and the record says so.
* ``autotune_choices()`` lists what was decided, with the measured times.
* Tensor-core algorithms (``igemm_tc``; float32 as TF32) are candidates only after
  ``set_tensor_cores(True)`` or with ``GPUCONV_TENSOR_CORES=1``; their choices are kept under keys of their
  own (``|tensor cores``), so switching it never reuses a choice made from the other candidate set.

Nothing here falls back: a candidate that fails raises, as it would when asked for by name.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .._geometry import ConvGeometry

REPEATS = 3

_lock = threading.Lock()
_enabled: bool | None = None  # None: read GPUCONV_AUTOTUNE
_tensor_cores: bool | None = None  # None: read GPUCONV_TENSOR_CORES
_cache_file: str | None = None  # None: read GPUCONV_AUTOTUNE_CACHE
_choices: dict[str, "Choice"] = {}
_loaded_files: set[str] = set()


@dataclass
class Choice:
    key: str
    algo: str
    how: str  # 'measured', 'cache file' or 'heuristic'
    times_ms: dict[str, float] = field(default_factory=dict)


def set_autotune(enabled: bool | None = None, *, cache_file: str | os.PathLike | None = None) -> None:
    """Switch measuring for ``conv2d(..., algo='auto')`` on CuPy arrays on or off (``None`` leaves it as
    it is; the default is on unless ``GPUCONV_AUTOTUNE=0``), and optionally set the JSON file that
    keeps choices across processes (``''`` for none; default ``GPUCONV_AUTOTUNE_CACHE``)."""
    global _enabled, _cache_file
    with _lock:
        if enabled is not None:
            _enabled = bool(enabled)
        if cache_file is not None:
            _cache_file = os.fspath(cache_file)


def _env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name, "").strip().lower()
    return default if not value else value not in ("0", "false", "no", "off")


def autotune_enabled() -> bool:
    if _enabled is not None:
        return _enabled
    return _env_flag("GPUCONV_AUTOTUNE", True)


def set_tensor_cores(enabled: bool | None) -> None:
    """Let ``conv2d(..., algo='auto')`` on CuPy arrays use tensor-core kernels (``igemm_tc``: float32
    computed as TF32, about 1e-3 relative precision, as PyTorch's default ``allow_tf32`` for convolutions;
    float16 with float32 accumulation). Off by default (``GPUCONV_TENSOR_CORES=1`` switches it on);
    ``None`` goes back to the environment variable. ``algo='igemm_tc'`` runs them whatever this says."""
    global _tensor_cores
    with _lock:
        _tensor_cores = None if enabled is None else bool(enabled)


def tensor_cores_enabled() -> bool:
    if _tensor_cores is not None:
        return _tensor_cores
    return _env_flag("GPUCONV_TENSOR_CORES", False)


def autotune_choices() -> list[dict]:
    """What ``algo='auto'`` decided so far in this process: one dict per (device, dtype, shape) with
    ``key``, ``algo``, ``how`` ('measured', 'cache file' or 'heuristic') and ``times_ms`` per candidate."""
    with _lock:
        return [asdict(c) for c in _choices.values()]


def clear_autotune_cache() -> None:
    """Forget the in-memory choices (the cache file, if any, is left alone and read again)."""
    with _lock:
        _choices.clear()
        _loaded_files.clear()


def _cache_path() -> Path | None:
    name = _cache_file if _cache_file is not None else os.environ.get("GPUCONV_AUTOTUNE_CACHE", "")
    return Path(name).expanduser() if name else None


def shape_key(device: str, geom: ConvGeometry, dtype) -> str:
    """What the choice depends on: the device, the dtype and every size of the call (not the data, the
    bias, flip or the activation, which the kernels handle identically)."""
    g = geom
    return (f"{device}|{np.dtype(dtype).name}|N{g.N} C{g.C} H{g.H} W{g.W} K{g.K} R{g.R} S{g.S} g{g.groups} "
            f"s{g.sh},{g.sw} p{g.pt},{g.pb},{g.pl},{g.pr} d{g.dh},{g.dw}")


def _load(path: Path) -> None:
    if str(path) in _loaded_files:
        return
    _loaded_files.add(str(path))
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return
    except (OSError, ValueError) as exc:
        raise ValueError(f"gpuconv autotune cache file {path} is unreadable ({exc}); delete it or point "
                         "GPUCONV_AUTOTUNE_CACHE elsewhere") from exc
    from . import conv
    for key, entry in data.get("choices", {}).items():
        if entry.get("algo") in conv.ALGORITHMS and key not in _choices:
            _choices[key] = Choice(key, entry["algo"], "cache file", dict(entry.get("times_ms", {})))


def _save(path: Path) -> None:
    entries = {c.key: {"algo": c.algo, "times_ms": c.times_ms} for c in _choices.values() if c.how != "heuristic"}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"format": "gpuconv-autotune-1", "choices": entries}, indent=1, sort_keys=True))
    os.replace(tmp, path)  # atomic: a concurrent reader sees the old or the new file, never half of one


def choose(rt, geom: ConvGeometry, dtype, launch) -> str:
    """The algorithm ``algo='auto'`` runs for this call on runtime ``rt``. ``launch(name)`` runs candidate
    ``name`` into the call's output buffer (so measuring needs no extra memory)."""
    from . import conv
    timer = getattr(rt, "time_ms", None)
    key = shape_key(rt.device_key() if hasattr(rt, "device_key") else rt.name, geom, dtype)
    if tensor_cores_enabled():
        key += "|tensor cores"  # a different candidate set: its own choice
    if timer is None or not autotune_enabled():
        algo = conv.choose_algo(geom, dtype, rt)
        with _lock:
            _choices[key] = Choice(key, algo, "heuristic")
        return algo
    path = _cache_path()
    with _lock:
        if path is not None:
            _load(path)
        known = _choices.get(key)
    if known is not None and known.how != "heuristic" and conv.decline_reason(known.algo, geom, dtype) is None:
        return known.algo
    names = conv.candidates(geom, dtype, rt)
    times = {name: timer(lambda name=name: launch(name), REPEATS) for name in names}
    best = min(names, key=times.__getitem__)
    with _lock:
        _choices[key] = Choice(key, best, "measured", {n: round(t, 6) for n, t in times.items()})
        if path is not None:
            _save(path)
    return best
