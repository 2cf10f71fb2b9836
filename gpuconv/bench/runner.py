"""Running the benchmark on a platform: for each case the inputs, the reference, the contenders (each
algorithm of ours, the peer, the peer with TF32), each checked before it is timed, then timed in
``schedule`` order; the rows of the results, and the whole run with its time budget and checkpoints."""

from __future__ import annotations

import datetime
import math
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Callable

import numpy as np

import gpuconv

from . import backward
from .environment import git_state, log, tensor_core_algos
from .peers import peer_label
from .render import fmt_rate
from .results import SCHEMA
from .stats import TF32_TOLERANCE, TOLERANCES, check_close, roofline_seconds, schedule, summarize
from .suite import Case, call_op


@dataclass
class Contender:
    """One implementation of one case: ``role`` 'ours' (``label`` = the algo), 'peer' or 'peer_tf32'."""

    label: str
    role: str
    fn: Callable
    setup: Callable | None = None  # host-side state to set before each call (TF32 flags), not timed
    loose: bool = False  # checked with TF32_TOLERANCE
    status: str = "pending"  # ok | wrong | declined | error | unchecked
    message: str | None = None
    kernel: str | None = None
    check: dict | None = None
    times: list = field(default_factory=list)


def make_contenders(plat, case: Case, x, w, algos, b=None) -> list[Contender]:
    """Ours for each algo (pooling: its one kernel, listed as 'auto'), then the peer (TF32 off) and, for
    float32 convolutions on a GPU, the peer with TF32 on. ``b``: the bias of a case that has one."""
    ours_algos = algos if case.is_conv else [a for a in algos if a == "auto"]
    # Tensor-core algorithms compute float32 as TF32: checked with the TF32 tolerance, like cuDNN's TF32 column.
    tf32 = tensor_core_algos() if case.dtype == "float32" else []
    out = [Contender(a, "ours", partial(call_op, gpuconv, case, x, w, b, **({"algo": a} if case.is_conv else {})),
                     loose=a in tf32)
           for a in ours_algos]
    torch = plat.torch
    if torch is not None and out:
        tx, tw = plat.to_torch(x), None if w is None else plat.to_torch(w)
        tb = None if b is None else plat.to_torch(b)
        out += peer_contenders(plat, case, partial(call_op, torch.nn.functional, case, tx, tw, tb), tx, tw)
    return out


def peer_contenders(plat, case: Case, peer: Callable, tx, tw) -> list[Contender]:
    """The peer (TF32 off) and, for float32 convolutions on a GPU, the peer with TF32 on."""
    label = peer_label(plat, case, tx, tw)
    out = [Contender(label, "peer", peer, setup=partial(plat.set_tf32, False))]
    if plat.kind == "gpu" and case.is_conv and case.dtype == "float32":
        out.append(Contender(f"{label} TF32", "peer_tf32", peer, setup=partial(plat.set_tf32, True),
                             loose=True))
    return out


def backward_contenders(plat, case: Case, ops: dict) -> list[Contender]:
    """A gradient: ours ('auto', ``gpuconv.grad`` picks its kernels), then the peer (and its TF32 column)."""
    out = [Contender("auto", "ours", backward.ours_call(case, ops))]
    if plat.torch is not None:
        peer, tx, tw = backward.peer_call(plat, case, ops)
        out += peer_contenders(plat, case, peer, tx, tw)
    return out


def reference(plat, case: Case, x, w, b=None):
    """``(array, description)`` every contender is checked against: PyTorch on float32 copies, TF32 off;
    without PyTorch the platform's fallback (GPU: gpuconv's NumPy path; CPU: none)."""
    x32 = x.astype(np.float32, copy=False)
    w32 = None if w is None else w.astype(np.float32, copy=False)
    b32 = None if b is None else b.astype(np.float32, copy=False)
    if plat.torch is None:
        extra = () if b32 is None else (b32,)
        return plat.fallback_reference(case, x32, w32, *extra)
    plat.set_tf32(False)
    tw = None if w32 is None else plat.to_torch(w32)
    tb = None if b32 is None else plat.to_torch(b32)
    ref = plat.from_torch(call_op(plat.torch.nn.functional, case, plat.to_torch(x32), tw, tb))
    plat.synchronize()
    return ref, "PyTorch, float32" + (", TF32 off" if plat.kind == "gpu" else "")


def prepare(plat, c: Contender, ref, dtype: str, magnitude=None) -> None:
    """The first call (compiles / picks the algorithm), its check against ``ref`` (a gradient's: relative
    to its ``magnitude``, see ``backward``), the other warm-up calls. Sets ``c.status``: declined (an algorithm of ours refusing the case with ValueError), error,
    wrong, unchecked (no reference) or ok."""
    try:
        if c.setup:
            c.setup()
        out = c.fn()
        plat.synchronize()
        if c.role == "ours":
            c.kernel = gpuconv.last_kernel().kernel
        if ref is None:
            c.status = "unchecked"
        else:
            if plat.torch is not None and plat.torch.is_tensor(out):
                out = plat.from_torch(out)
            rtol, atol = TF32_TOLERANCE if c.loose else TOLERANCES[dtype]
            c.check = check_close(out, ref, rtol, atol, magnitude)
            c.status = "ok" if c.check["ok"] else "wrong"
        del out
        for _ in range(plat.warmup - 1):
            if c.setup:
                c.setup()
            c.fn()
        plat.synchronize()
    except ValueError as exc:
        declined = c.role == "ours" and c.label != "auto" and c.status == "pending"
        c.status, c.message = ("declined" if declined else "error"), str(exc)
    except Exception as exc:  # a failing contender is a failed row, not a crashed run
        c.status, c.message = "error", f"{type(exc).__name__}: {exc}"


def time_contenders(plat, contenders, repeats: int) -> None:
    """Time the contenders that passed their check (or could not be checked), in ``schedule`` order (on
    the CPU in ``plat.rounds`` rounds)."""
    timed = [c for c in contenders if c.status in ("ok", "unchecked")]
    previous = None
    for i in schedule(len(timed), repeats, plat.interleave, getattr(plat, "rounds", 1)):
        c = timed[i]
        if c.status == "error":
            continue
        if previous is not None and previous is not c:
            plat.settle()
        previous = c
        try:
            if c.setup:
                c.setup()
            c.times.append(plat.time_once(c.fn))
        except Exception as exc:
            c.status, c.message = "error", f"{type(exc).__name__} while timing: {exc}"


def figures(c: Contender | None, case: Case, roof: dict) -> dict | None:
    """The JSON record of one contender: status, check, times and the derived rates."""
    if c is None:
        return None
    d = dict(label=c.label, status=c.status, message=c.message, kernel=c.kernel, check=c.check)
    if c.times and c.status in ("ok", "unchecked"):
        d.update(summarize(c.times))
        seconds = d["median_ms"] * 1e-3
        d["flop_per_s"] = case.flops / seconds if case.flops else None
        d["byte_per_s"] = case.nbytes / seconds
        bound = roofline_seconds(case.flops, case.nbytes, roof.get("peak_flops"), roof.get("bandwidth"))
        d["roofline_fraction"] = bound / seconds if bound else None
    return d


def speedup(ours: dict | None, peer: dict | None) -> float | None:
    """peer time / our time (above 1: ours is faster); None unless both were timed."""
    if ours and peer and ours.get("median_ms") and peer.get("median_ms"):
        return peer["median_ms"] / ours["median_ms"]
    return None


def case_rows(case: Case, contenders, roof: dict, ref_source) -> list[dict]:
    """One row per algorithm of ours, each carrying the peer's figures from the same run."""
    by_role = {c.role: c for c in contenders if c.role != "ours"}
    peer = figures(by_role.get("peer"), case, roof)
    tf32 = figures(by_role.get("peer_tf32"), case, roof)
    rows = []
    for c in contenders:
        if c.role != "ours":
            continue
        ours = figures(c, case, roof)
        row = dict(layer=case.name, op=case.op, dtype=case.dtype, shape=case.shape_label,
                   case=case.record(), flops=case.flops, bytes=case.nbytes,
                   metric="B/s" if case.memory_bound else "FLOP/s", algo=c.label, status=c.status,
                   message=c.message, kernel=c.kernel, check=c.check, reference=ref_source, ours=ours,
                   peer=peer,
                   peer_tf32=tf32, speed_vs_peer=speedup(ours, peer),
                   speed_vs_peer_tf32=speedup(ours, tf32))
        if case.is_backward:  # forward rows have no "direction" key (files before gradients had none)
            row = dict(row, direction=case.direction)
        rows.append(row)
    return rows


def run_case(plat, case: Case, algos, repeats: int, roof: dict, seed: int = 0) -> list[dict]:
    magnitude = None
    if case.is_backward:
        ops = backward.operands(plat, case, seed)
        try:
            ref, magnitude, ref_source = backward.reference(plat, case, ops)
        except Exception as exc:
            ref, ref_source = None, f"none: the reference failed ({type(exc).__name__}: {exc})"
        contenders = backward_contenders(plat, case, ops)
    else:
        x = plat.randn(case.input_shape, case.dtype, seed)
        w = None
        if case.is_conv:
            w = plat.randn(case.weight_shape, case.dtype, seed + 1, scale=1 / math.sqrt(case.fan_in))
        b = plat.randn(case.bias_shape, case.dtype, seed + 2) if case.bias_shape else None
        ops = dict(x=x, w=w, b=b)
        del x, w, b
        try:
            ref, ref_source = reference(plat, case, ops["x"], ops["w"], ops["b"])
        except Exception as exc:
            ref, ref_source = None, f"none: the reference failed ({type(exc).__name__}: {exc})"
        contenders = make_contenders(plat, case, ops["x"], ops["w"], algos, ops["b"])
    for c in contenders:
        prepare(plat, c, ref, case.dtype, magnitude)
    del ref, magnitude
    time_contenders(plat, contenders, repeats)
    rows = case_rows(case, contenders, roof, ref_source)
    del contenders, ops
    plat.release()
    return rows


def progress_line(rows) -> str:
    parts = []
    for r in rows:
        o = r["ours"]
        parts.append(f"{r['algo']} " + (f"{o['median_ms']:.3f} ms" if o.get("median_ms") else r["status"]))
    if rows:
        for key in ("peer", "peer_tf32"):
            p = rows[0][key]
            if p:
                parts.append(f"{p['label']} " + (f"{p['median_ms']:.3f} ms" if p.get("median_ms") else p["status"]))
    return " | ".join(parts)


def run_bench(plat, cases, algos, repeats: int, *, suite: str, filters: dict | None = None,
              peer_missing: str | None = None, scaling: str | None = None, budget_s: float | None = None,
              checkpoint: Callable[[dict], None] | None = None) -> dict:
    """Run every case on ``plat``; returns the JSON-ready results.

    ``checkpoint(results)`` is called once the run is described and again after every case, with
    ``results['state']`` ``'running'``: a run killed midway leaves the rows it finished (``main`` writes
    the JSON there). With ``budget_s``, a case after the first is started only while the time spent so far plus the
    longest case so far fits in the budget; the cases left out are listed in ``cases_not_run`` and the
    state is ``'budget'``; a run that did every case ends ``'done'``."""
    t0 = time.perf_counter()
    with plat.session():
        device, versions = plat.describe()
        log(f"gpuconv bench on {device['name']}: measuring the roofline figures ...")
        roof = plat.roofline()
        log(f"  peak {fmt_rate(roof['peak_flops'], 'FLOP/s')} ({roof['peak_source']}), "
            f"bandwidth {fmt_rate(roof['bandwidth'], 'B/s')}")
        results = dict(schema=SCHEMA,
                       date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                       **git_state(), device=device, versions=versions,
                       peer=dict(label=plat.peer_label, missing=peer_missing,
                                 name=None if plat.torch is None else f"PyTorch {plat.torch.__version__}"),
                       settings=dict(suite=suite, filters=filters or {}, repeats=repeats, algos=list(algos),
                                     scaling=scaling, budget_s=budget_s,
                                     tolerances=dict(TOLERANCES, tf32=TF32_TOLERANCE), **plat.settings()),
                       roofline=roof, rows=[], state="running", cases_total=len(cases), cases_done=0,
                       cases_not_run=[], elapsed_s=round(time.perf_counter() - t0, 1))
        if checkpoint:
            checkpoint(results)
        longest = 0.0
        for i, case in enumerate(cases, 1):
            spent = time.perf_counter() - t0
            # The first case always runs: a budget spent on start-up alone (the roofline measurement on a
            # loaded machine) would leave a results file with no rows at all.
            if budget_s is not None and i > 1 and spent + longest > budget_s:
                results["cases_not_run"] = [f"{c.title} ({c.dtype})" for c in cases[i - 1:]]
                log(f"bench: time budget of {budget_s:g} s: {spent:.1f} s spent and the longest case took "
                    f"{longest:.1f} s, so the last {len(cases) - i + 1} case(s) are not run")
                break
            t_case = time.perf_counter()
            log(f"[{i:2d}/{len(cases)}] {case.title} ({case.dtype}, {case.shape_label}) ...")
            case_result = run_case(plat, case, algos, repeats, roof)
            longest = max(longest, time.perf_counter() - t_case)
            results["rows"] += case_result
            results["cases_done"] = i
            results["elapsed_s"] = round(time.perf_counter() - t0, 1)
            log(f"        {progress_line(case_result)}  [{time.perf_counter() - t_case:.1f} s, "
                f"total {time.perf_counter() - t0:.0f} s]")
            if checkpoint:
                checkpoint(results)
    results["state"] = "budget" if results["cases_not_run"] else "done"
    results["elapsed_s"] = round(time.perf_counter() - t0, 1)
    return results


def failed(results: dict) -> list[dict]:
    """Rows where ours gave a wrong answer or an error (declined and unchecked are not failures)."""
    return [r for r in results["rows"] if r["status"] in ("wrong", "error")]
