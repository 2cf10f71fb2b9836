"""What a CUDA algorithm is: one way to compute one operation in one direction, as a record the operation
table (``ops.py``) lists and the selection (``select.py``) chooses from.

An :class:`Algorithm` names its kernel source file and every template instantiation its launch code can
request (compiled together by the runtime and by the NVRTC compile check), a rule that says when it
declines a geometry (with the reason, raised as ``ValueError`` when the user asked for it by name;
``algo='auto'`` only considers algorithms that accept), and a launch function. The launch signature is
the operation's: every algorithm of one (op, direction) takes the same arguments (``ops.Operation``
documents them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

FORWARD = "forward"
# Directions to come with the gradients: "backward_data", "backward_filter" (convolution), "backward"
# (pooling). An operation is keyed by (op, direction) from the start, so their algorithms, choices and
# autotune entries never collide with the forward ones.


@dataclass(frozen=True)
class Algorithm:
    """One CUDA algorithm of one (op, direction).

    * ``name``: the ``algo=`` value (unique within its operation).
    * ``op``, ``direction``: the operation it computes, e.g. ``("conv2d", "forward")``.
    * ``source``: its file in ``kernels/``.
    * ``instantiations``: every name expression ``launch`` may request.
    * ``decline_reason(geom, dtype)``: None if it handles this call, else a sentence saying why not.
    * ``launch(rt, ...)``: runs it on runtime ``rt`` with the operation's arguments; returns the name
      expression that ran.
    * ``idea``: one line, for docs and ``gpuconv.backend_info()``.
    * ``tensor_cores``: its float32 products are TF32 (less precise than float32), so ``algo='auto'``
      considers it only when the user allowed tensor cores (``gpuconv.set_tensor_cores``).
    * ``min_compute_capability``: the oldest GPU it runs on (``80`` = 8.0); older devices are declined.
    """

    name: str
    op: str
    direction: str
    source: str
    instantiations: tuple[str, ...]
    decline_reason: Callable
    launch: Callable
    idea: str = ""
    tensor_cores: bool = False
    min_compute_capability: int = 0

    @property
    def key(self) -> tuple[str, str]:
        return (self.op, self.direction)


def accepts_everything(geom, dtype) -> None:
    """The decline rule of an algorithm that handles every geometry its operation's validation lets
    through (the pooling kernels check their 32-bit limit at launch)."""
    return None
