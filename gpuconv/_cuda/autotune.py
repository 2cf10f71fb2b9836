"""``algo='auto'`` on the GPU: measure every algorithm that accepts the call, once per operation, shape,
dtype and device, and keep the fastest (as ``torch.backends.cudnn.benchmark`` does).

* The first call of a shape runs each candidate (``select.tuning_candidates``: the algorithms that accept
  the call, the GEMM ones as one candidate per tile and split-K on / off, e.g. ``igemm/wide``,
  ``igemm/small/split``) once to compile and warm it, then
  ``REPEATS`` more times between CUDA events on the current stream, and keeps the minimum; the call's
  output comes from the winner, run once more afterwards. Later calls of that shape look the choice up.
* Choices are keyed by (op, direction) as well as device, dtype and sizes, so a backward pass's choice
  never collides with the forward one of the same shape.
* Choices live in memory per process; with a cache file (``set_autotune(cache_file=...)`` or the
  environment variable ``GPUCONV_AUTOTUNE_CACHE``) they are also written to and read from a JSON file,
  keyed on the device's name and compute capability and gpuconv's version. Files of the first format
  (``gpuconv-autotune-1``, conv2d forward only, keys without the operation) are read as conv2d forward.
  An entry names an algorithm (``igemm``: its rule's tile, as entries written before the tiles were
  measured) or a variant (``igemm/wide``); an entry naming neither (a variant this version lacks) is
  skipped, and that shape is measured again.
* Measuring is on by default; ``set_autotune(False)`` or ``GPUCONV_AUTOTUNE=0`` switches it off, and a
  runtime that cannot time kernels (the tests' CPU emulator: ``can_time`` False) never measures:
  ``select.choose_algo``'s documented heuristic decides then, and the record says so.
* ``autotune_choices()`` lists what was decided, with the measured times.
* Tensor-core algorithms (``igemm_tc``; float32 as TF32) are candidates only after
  ``set_tensor_cores(True)`` or with ``GPUCONV_TENSOR_CORES=1``; their choices are kept under keys of their
  own (``|tensor cores``), so switching it never reuses a choice made from the other candidate set.

Nothing here falls back: a candidate that fails raises, as it would when asked for by name.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import settings
from .algo import FORWARD

# The operation table and the selection rules import every algorithm module; they are imported where
# needed, so that ``import gpuconv`` (which exports this module's functions) stays light.

REPEATS = 3
FORMAT = "gpuconv-autotune-2"
_FORMAT_1 = "gpuconv-autotune-1"  # conv2d forward only; keys began with the device

_choices: dict[str, "Choice"] = {}
_loaded_files: set[str] = set()


@dataclass
class Choice:
    key: str
    algo: str
    how: str  # 'measured', 'cache file' or 'heuristic'
    times_ms: dict[str, float] = field(default_factory=dict)


def autotune_choices() -> list[dict]:
    """What ``algo='auto'`` decided so far in this process: one dict per (operation, device, dtype, shape)
    with ``key``, ``algo`` (an algorithm, or a variant of one such as ``igemm/wide``), ``how`` ('measured',
    'cache file' or 'heuristic') and ``times_ms`` per candidate."""
    with settings.lock:
        return [asdict(c) for c in _choices.values()]


def clear_autotune_cache() -> None:
    """Forget the in-memory choices (the cache file, if any, is left alone and read again)."""
    with settings.lock:
        _choices.clear()
        _loaded_files.clear()


def shape_key(device: str, geom, dtype, op: str = "conv2d", direction: str = FORWARD) -> str:
    """What the choice depends on: the operation, the device, the dtype and every size of the call (not
    the data, the bias, flip or the activation, which the kernels handle identically)."""
    g = geom
    return (f"{op} {direction}|{device}|{np.dtype(dtype).name}|N{g.N} C{g.C} H{g.H} W{g.W} K{g.K} R{g.R} "
            f"S{g.S} g{g.groups} s{g.sh},{g.sw} p{g.pt},{g.pb},{g.pl},{g.pr} d{g.dh},{g.dw}")


def _known_algo(key: str, algo) -> bool:
    """Whether a cache entry's ``algo`` names an algorithm or a variant of one of the key's operation."""
    from .ops import OPERATIONS
    op_direction = key.split("|", 1)[0].split(" ")
    o = OPERATIONS.get(tuple(op_direction)) if len(op_direction) == 2 else None
    if o is None or not isinstance(algo, str):
        return False
    try:
        o.algorithms[algo]  # resolves variant names too
    except KeyError:
        return False
    return True


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
    prefix = f"conv2d {FORWARD}|" if data.get("format") == _FORMAT_1 else ""
    for key, entry in data.get("choices", {}).items():
        key = prefix + key
        if _known_algo(key, entry.get("algo")) and key not in _choices:
            _choices[key] = Choice(key, entry["algo"], "cache file", dict(entry.get("times_ms", {})))


def _save(path: Path) -> None:
    entries = {c.key: {"algo": c.algo, "times_ms": c.times_ms} for c in _choices.values() if c.how != "heuristic"}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"format": FORMAT, "choices": entries}, indent=1, sort_keys=True))
    os.replace(tmp, path)  # atomic: a concurrent reader sees the old or the new file, never half of one


def choose(rt, geom, dtype, launch, op: str = "conv2d", direction: str = FORWARD) -> str:
    """The algorithm (or variant, ``<algorithm>/<variant>``) ``algo='auto'`` runs for this call on runtime
    ``rt``. ``launch(name)`` runs candidate ``name`` into the call's output buffer (so measuring needs no
    extra memory; the operation's ``algorithms[name]`` resolves variant names)."""
    from . import select
    key = shape_key(rt.device_key(), geom, dtype, op, direction)
    if settings.tensor_cores_enabled():
        key += "|tensor cores"  # a different candidate set: its own choice
    if not rt.can_time or not settings.autotune_enabled():
        algo = select.choose_algo(geom, dtype, rt, op, direction)
        with settings.lock:
            _choices[key] = Choice(key, algo, "heuristic")
        return algo
    path = settings.cache_path()
    with settings.lock:
        if path is not None:
            _load(path)
        known = _choices.get(key)
    if (known is not None and known.how != "heuristic"
            and select.decline_reason(known.algo, geom, dtype, op, direction) is None):
        return known.algo
    names = select.tuning_candidates(geom, dtype, rt, op, direction)
    times = {name: rt.time_ms(lambda name=name: launch(name), REPEATS) for name in names}
    best = min(names, key=times.__getitem__)
    with settings.lock:
        _choices[key] = Choice(key, best, "measured", {n: round(t, 6) for n, t in times.items()})
        if path is not None:
            _save(path)
    return best

