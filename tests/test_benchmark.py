"""``python -m gpuconv bench`` (the package gpuconv/bench/) and the README tool bench/update_readme.py: the
suite, the pure figures (roofline, statistics, checks, schedule), the Markdown / README output, and CPU-mode
smoke runs. No timing is asserted.

The GPU timing loop needs CuPy and a device; its row logic (algorithms from ``gpuconv._cuda.conv.OP.names``,
declined rows, the kernel record) is exercised here on the CPU emulator of our CUDA kernels.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import time
import types
import math
import sys

import numpy as np
import pytest

import gpuconv
from gpuconv.bench import cli as bench_cli
from gpuconv.bench import backward, environment, peers, platforms, render, runner, stats, suite
from gpuconv.bench import results as result_files
from gpuconv._geometry import conv_geometry
from gpuconv.__main__ import main as cli

# The README tool of the repository (bench/update_readme.py, not part of the package), as --update-readme
# loads it.
readme_tool = bench_cli.load_readme_tool()

try:
    import torch
except ImportError:
    torch = None

def needs_torch(fn):
    """The peer: PyTorch CPU (marked ``torch``, skipped without it)."""
    return pytest.mark.torch(pytest.mark.skipif(torch is None, reason="PyTorch is not installed")(fn))


# --------------------------------------------------------------------------------------------
# the suite
# --------------------------------------------------------------------------------------------

def test_suite_is_the_issue_layer_list():
    cases = suite.build_suite()
    conv = {c.name: (c.N, c.C, c.H, c.K, c.R, c.stride, c.pad, c.groups) for c in cases
            if c.is_conv and c.dims == 2 and c.dtype == "float32" and not c.name.endswith("N=1")}
    assert conv["ResNet-50 stem 7x7/2"] == (32, 3, 224, 64, 7, 2, 3, 1)
    assert conv["1x1 stride 2"] == (32, 256, 56, 512, 1, 2, 0, 1)
    assert conv["AlexNet grouped conv2"] == (32, 96, 27, 256, 5, 1, 2, 2)
    assert conv["MobileNetV2 dw 96 /2"] == (32, 96, 112, 96, 3, 2, 1, 96)
    assert conv["LeNet-5 conv1"] == (256, 1, 32, 6, 5, 1, 0, 1)
    assert len(conv) == 15
    pools = {c.name: c for c in cases if not c.is_conv and c.dims == 2 and c.dtype == "float32"}
    assert len(pools) == 3
    assert pools["max-pool 3x3/2 pad 1"].output_shape == (32, 64, 56, 56)
    assert pools["avg-pool 2x2/2"].output_shape == (32, 64, 56, 56)
    assert pools["global avg-pool"].output_shape == (32, 2048, 1, 1)
    latency = [c for c in cases if c.name.endswith("N=1")]
    assert latency and all(c.N == 1 for c in latency)
    fp16 = [c for c in cases if c.dtype == "float16"]
    assert 0 < len(fp16) < len(cases) // 2
    keys = [(c.name, c.dtype) for c in cases]
    assert len(keys) == len(set(keys))


def test_quick_suite_is_a_subset():
    full = {(c.name, c.dtype) for c in suite.build_suite()}
    quick = suite.build_suite(quick=True)
    assert {(c.name, c.dtype) for c in quick} == suite.QUICK <= full


def test_cpu_scaling():
    by_name = {(c.name, c.dtype): c for c in suite.build_suite(cpu=True)}
    assert by_name["VGG-16 conv1_2", "float32"].input_shape == (2, 64, 112, 112)
    assert by_name["LeNet-5 conv1", "float32"].N == 16
    assert by_name["conv5 3x3 N=1", "float32"].N == 1
    assert by_name["max-pool 3x3/2 pad 1", "float32"].input_shape == (2, 64, 56, 56)
    assert by_name["ResNet-50 3x3", "float32"].H == 56  # below 112: unchanged
    assert by_name["AlexNet conv1", "float32"].output_shape == (2, 64, 27, 27)
    # 3-D: batch divided, each axis of 28 or more halved; 1-D: batch divided (at least 1), length unchanged
    assert by_name["C3D conv1", "float32"].input_shape == (1, 3, 16, 56, 56)
    assert by_name["C3D conv3a", "float32"].input_shape == (1, 128, 8, 14, 14)
    assert by_name["3-D U-Net 32 3x3x3 @64", "float32"].input_shape == (1, 32, 32, 32, 32)
    assert by_name["3-D U-Net 32 3x3x3 @64", "float32"].H == 32  # an int size stays an int
    assert by_name["C3D pool1 1x2x2", "float32"].output_shape == (1, 64, 16, 28, 28)
    assert by_name["wav2vec2 conv1d 512 k3/2", "float32"].input_shape == (1, 512, 8000)
    assert by_name["Conformer dw conv1d k31", "float32"].input_shape == (2, 256, 512)


def test_select():
    cases = suite.build_suite()
    got = suite.select(cases, layers=["alexnet", " LENET-5"], dtypes=["float32"])
    assert [c.name for c in got] == ["AlexNet conv1", "AlexNet conv2", "AlexNet grouped conv2", "LeNet-5 conv1"]
    assert all(c.dtype == "float16" for c in suite.select(cases, dtypes=["float16"]))
    assert suite.select(cases) == cases


def test_targets_suite():
    """``--targets``: the NumPy path's layers at their own batch sizes (not CPU-scaled), convolutions with a
    bias; a case without a bias is stored as before (no ``bias`` key), one with a bias says so."""
    cases = suite.build_targets()
    conv = {c.name: (c.N, c.C, c.H, c.K, c.R, c.stride, c.pad, c.groups) for c in cases if c.is_conv}
    assert conv["LeNet conv2"] == (64, 6, 14, 16, 5, 1, 0, 1)
    assert conv["3x3/2 128->128 @56"] == (8, 128, 56, 128, 3, 2, 1, 1)
    assert conv["depthwise 3x3 144 @56"] == (8, 144, 56, 144, 3, 1, 1, 144)
    assert len(conv) == 7 and all(c.bias and c.dtype == "float32" for c in cases if c.is_conv)
    (pool,) = [c for c in cases if not c.is_conv]
    assert pool.input_shape == (8, 64, 112, 112) and not pool.bias
    lenet = next(c for c in cases if c.name == "LeNet conv1")
    assert lenet.bias_shape == (6,) and lenet.shape_label.endswith(" +bias") and lenet.record()["bias"] is True
    assert lenet.nbytes == 4 * (64 * 32 * 32 + 64 * 6 * 28 * 28 + 6 * 25 + 6)
    plain = suite.Case("ResNet-50 3x3", "conv2d", 32, 64, 56, 64, 3, 1, 1)
    assert "bias" not in plain.record() and plain.bias_shape is None


def test_case_flops_bytes_and_metric():
    c = suite.Case("ResNet-50 3x3", "conv2d", 32, 64, 56, 64, 3, 1, 1)
    assert c.flops == 2 * 32 * 64 * 56 * 56 * 64 * 9
    assert c.nbytes == 4 * (32 * 64 * 56 * 56 * 2 + 64 * 64 * 9)
    assert not c.memory_bound
    dw = suite.Case("dw", "conv2d", 2, 8, 10, 8, 3, 1, 1, groups=8, dtype="float16")
    assert dw.flops == 2 * 2 * 8 * 100 * 9 and dw.memory_bound
    assert dw.nbytes == 2 * (2 * 8 * 100 * 2 + 8 * 9)
    pool = suite.Case("p", "max_pool2d", 2, 3, 8, R=2, stride=2)
    assert pool.flops == 0 and pool.memory_bound and pool.kwargs == dict(kernel_size=2, stride=2, padding=0)
    assert pool.nbytes == 4 * (2 * 3 * 64 + 2 * 3 * 16)


# --------------------------------------------------------------------------------------------
# the 1-D and 3-D rows
# --------------------------------------------------------------------------------------------

def test_nd_layers_in_the_suite():
    """Issue 18's rows: 1-D audio layers and 3-D video / volume layers, float32 (their gradients: the backward
    suite, test_backward_suite), one of them (C3D conv1) in --quick."""
    cases = {c.name: c for c in suite.build_suite() if c.dims != 2}
    assert set(cases) == {layer[0] for layer in suite.ND_LAYERS}
    assert {c.op for c in cases.values()} == {"conv1d", "conv3d", "max_pool3d"}
    assert all(c.dtype == "float32" and not c.is_backward for c in cases.values())
    w2v, conformer, tcn = (cases[n] for n in ("wav2vec2 conv1d 512 k3/2", "Conformer dw conv1d k31",
                                              "TCN conv1d k3 d4"))
    assert w2v.weight_shape == (512, 512, 3) and w2v.output_shape == (8, 512, 3999)
    assert conformer.weight_shape == (256, 1, 31) and conformer.memory_bound and conformer.output_shape[-1] == 512
    assert tcn.kwargs == dict(stride=1, padding=4, groups=1, dilation=4) and tcn.output_shape == (16, 256, 2048)
    c3d = cases["C3D conv1"]
    assert c3d.input_shape == (16, 3, 16, 112, 112) and c3d.weight_shape == (64, 3, 3, 3, 3)
    assert c3d.kwargs == dict(stride=1, padding=1, groups=1)  # no dilation key: 2-D calls are unchanged
    pool = cases["C3D pool1 1x2x2"]
    assert pool.kwargs == dict(kernel_size=(1, 2, 2), stride=(1, 2, 2), padding=0)
    assert pool.output_shape == (16, 64, 16, 56, 56)
    assert [c.name for c in suite.build_suite(quick=True) if c.dims != 2] == ["C3D conv1"]


def test_nd_case_flops_bytes_labels_and_record():
    c = suite.Case("v", "conv3d", 2, 4, (5, 9, 7), 6, (3, 1, 2), (1, 2, 1), (1, 0, 1), 2)
    assert c.dims == 3 and c.weight_shape == (6, 2, 3, 1, 2) and c.fan_in == 2 * 3 * 1 * 2
    assert c.output_shape == (2, 6, 5, 5, 8)
    assert c.flops == 2 * (2 * 6 * 5 * 5 * 8) * (2 * 3 * 1 * 2)
    assert c.nbytes == 4 * (2 * 4 * 5 * 9 * 7 + 2 * 6 * 5 * 5 * 8 + 6 * 2 * 3 * 1 * 2)
    assert c.shape_label == "2x4x5x9x7, 6x3x1x2/1x2x1 p1x0x1 g2" and not c.memory_bound
    d = suite.Case("d", "conv1d", 1, 3, 20, 5, 3, 2, 4, dilation=4, bias=True)
    assert d.output_shape == (1, 5, 10) and d.shape_label == "1x3x20, 5x3/2 p4 d4 +bias"
    assert d.record()["dilation"] == 4 and "dilation" not in c.record()
    assert d.flops == 2 * 5 * 10 * 3 * 3
    p = suite.Case("p", "max_pool3d", 1, 2, (4, 6, 6), R=(1, 2, 2), stride=(1, 2, 2), direction="backward")
    assert p.output_shape == (1, 2, 4, 3, 3) and p.flops == 0 and p.memory_bound
    assert p.nbytes == 4 * (2 * 4 * 6 * 6 + 2 * 4 * 3 * 3) + 8 * (2 * 4 * 3 * 3)  # with the int64 indices
    assert p.shape_label == "1x2x4x6x6, 1x2x2/1x2x2 p0"
    # the 2-D labels and records are as the committed results files have them
    sq = suite.Case("ResNet-50 3x3", "conv2d", 32, 64, 56, 64, 3, 1, 1)
    assert sq.shape_label == "32x64x56x56, 64x3x3/1 p1" and sq.output_shape == (32, 64, 56, 56)
    assert set(sq.record()) == {"name", "op", "N", "C", "H", "K", "R", "stride", "pad", "groups", "dtype"}


@needs_torch
def test_output_shapes_are_pytorchs():
    """Every forward case's output shape, FLOP count's filter and weight shape are those PyTorch's own call
    gives (on shape-only 'meta' tensors: nothing is computed)."""
    F = torch.nn.functional
    for c in suite.build_suite() + suite.build_suite(cpu=True) + suite.build_targets():
        x = torch.empty(c.input_shape, device="meta")
        w = torch.empty(c.weight_shape, device="meta") if c.is_conv else None
        y = suite.call_op(F, c, x, w)
        assert tuple(y.shape) == c.output_shape, c.title


# --------------------------------------------------------------------------------------------
# pure figures
# --------------------------------------------------------------------------------------------

def test_fp32_lanes_and_peak():
    assert stats.fp32_lanes_per_sm((8, 0)) == 64  # A100
    assert stats.fp32_lanes_per_sm((7, 0)) == 64  # V100
    for cc in ((8, 6), (8, 9), (9, 0)):
        assert stats.fp32_lanes_per_sm(cc) == 128
    assert stats.fp32_lanes_per_sm((99, 0)) is None
    h100 = stats.fp32_peak_flops(132, (9, 0), 1_980_000)
    assert h100 == pytest.approx(66.9e12, rel=1e-3)
    a100 = stats.fp32_peak_flops(108, (8, 0), 1_410_000)
    assert a100 == pytest.approx(19.5e12, rel=1e-2)
    assert stats.fp32_peak_flops(132, (99, 0), 1_980_000) is None
    assert stats.fp32_peak_flops(132, (9, 0), None) is None


def test_roofline_seconds():
    assert stats.roofline_seconds(100e12, 1e9, 50e12, 2e12) == pytest.approx(2.0)  # compute-bound
    assert stats.roofline_seconds(1e9, 4e12, 50e12, 2e12) == pytest.approx(2.0)  # memory-bound
    assert stats.roofline_seconds(0, 4e12, None, 2e12) == pytest.approx(2.0)  # pooling: no peak needed
    assert stats.roofline_seconds(1e9, 4e12, None, 2e12) is None
    assert stats.roofline_seconds(1e9, 4e12, 50e12, None) is None


def test_summarize_and_geomean():
    s = stats.summarize([0.003, 0.001, 0.002, 0.010])
    assert s == dict(median_ms=pytest.approx(2.5), min_ms=pytest.approx(1.0), max_ms=pytest.approx(10.0), n=4)
    assert stats.geomean([0.5, 2.0]) == pytest.approx(1.0)
    assert stats.geomean([None]) is None


def test_schedule():
    assert stats.schedule(3, 2, interleave=True) == [0, 1, 2, 2, 1, 0]
    assert stats.schedule(2, 3, interleave=False) == [0, 0, 0, 1, 1, 1]
    assert stats.schedule(0, 5, interleave=True) == []


def test_schedule_in_rounds():
    """``--rounds``: blocked calls split into rounds, which contender goes first alternating; every
    contender still gets ``repeats`` calls. One round is the plain blocked order."""
    assert stats.schedule(2, 5, interleave=False, rounds=2) == [0, 0, 0, 1, 1, 1, 1, 1, 0, 0]
    assert stats.schedule(2, 4, interleave=False, rounds=4) == [0, 1, 1, 0, 0, 1, 1, 0]
    assert stats.schedule(2, 3, interleave=False, rounds=1) == stats.schedule(2, 3, interleave=False)
    assert stats.schedule(3, 2, interleave=True, rounds=5) == stats.schedule(3, 2, interleave=True)
    order = stats.schedule(3, 7, interleave=False, rounds=3)
    assert [order.count(i) for i in range(3)] == [7, 7, 7]


def test_check_close():
    ref = np.array([[1.0, -2.0], [0.0, 100.0]], np.float32)
    ok = stats.check_close(ref + 1e-4, ref, 1e-3, 1e-3)
    assert ok["ok"] and ok["max_abs_err"] == pytest.approx(1e-4, rel=1e-2) and ok["worst"] <= 1
    assert stats.check_close(ref * 1.0005, ref, 1e-3, 1e-3)["ok"]  # relative part
    bad = stats.check_close(ref + np.float32(0.01), ref, 1e-3, 1e-3)
    assert not bad["ok"] and bad["worst"] > 1
    nan = ref.copy()
    nan[0, 0] = np.nan
    assert not stats.check_close(nan, ref, 1e-3, 1e-3)["ok"]
    assert not stats.check_close(ref[:1], ref, 1e-3, 1e-3)["ok"]
    assert stats.check_close(ref.astype(np.float16), ref, 1e-2, 1e-2)["ok"]


def test_cuda_version_string_and_slug():
    assert environment.cuda_version_string(12080) == "12.8"
    assert environment.cuda_version_string(13000) == "13.0"
    assert environment.slugify("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"


# --------------------------------------------------------------------------------------------
# contenders: check before timing, declined / error / wrong rows, schedule
# --------------------------------------------------------------------------------------------

class FakePlatform(platforms.CpuPlatform):
    """CPU platform whose timer only records the order of the calls."""

    warmup = 1

    def __init__(self, interleave=False):
        super().__init__(None)
        self.interleave, self.calls = interleave, []

    def settle(self):
        self.calls.append("settle")

    def time_once(self, fn):
        fn()
        return 1e-3


def _declining():
    raise ValueError("tiled declines this geometry because reasons")


def test_prepare_statuses():
    plat, ref = FakePlatform(), np.ones(3, np.float32)
    c = runner.Contender("tiled", "ours", _declining)
    runner.prepare(plat, c, ref, "float32")
    assert (c.status, c.message) == ("declined", "tiled declines this geometry because reasons")
    c = runner.Contender("auto", "ours", _declining)  # 'auto' must never decline
    runner.prepare(plat, c, ref, "float32")
    assert c.status == "error"
    c = runner.Contender("direct", "ours", lambda: 1 / 0)
    runner.prepare(plat, c, ref, "float32")
    assert c.status == "error" and "ZeroDivisionError" in c.message
    gpuconv.max_pool2d(np.zeros((1, 1, 2, 2), np.float32), 2)  # something for last_kernel()
    c = runner.Contender("direct", "ours", lambda: ref + 1)
    runner.prepare(plat, c, ref, "float32")
    assert c.status == "wrong" and not c.check["ok"] and c.kernel == "numpy_max_pool"
    c = runner.Contender("direct", "ours", lambda: ref + 1e-5)
    runner.prepare(plat, c, ref, "float32")
    assert c.status == "ok" and c.check["max_abs_err"] < 1e-4
    c = runner.Contender("TF32", "peer_tf32", lambda: ref * 1.01, loose=True)
    runner.prepare(plat, c, ref, "float32")
    assert c.status == "ok"  # loose tolerance
    c = runner.Contender("direct", "ours", lambda: ref)
    runner.prepare(plat, c, None, "float32")
    assert c.status == "unchecked"


@pytest.mark.parametrize("interleave", [True, False])
def test_only_checked_contenders_are_timed(interleave):
    plat = FakePlatform(interleave)
    order = []
    cs = [runner.Contender(name, "ours", lambda n=name: order.append(n)) for name in "abc"]
    cs[0].status, cs[1].status, cs[2].status = "ok", "wrong", "unchecked"
    runner.time_contenders(plat, cs, repeats=2)
    assert [len(c.times) for c in cs] == [2, 0, 2]
    assert order == (["a", "c", "c", "a"] if interleave else ["a", "a", "c", "c"])
    assert plat.calls.count("settle") == (2 if interleave else 1)


# --------------------------------------------------------------------------------------------
# Markdown, files, README
# --------------------------------------------------------------------------------------------

def _gpu_like_results():
    """Results as a GPU run would give them, built from fake contenders (no GPU involved)."""
    case = suite.Case("ResNet-50 3x3", "conv2d", 32, 64, 56, 64, 3, 1, 1)
    pool = suite.Case("max-pool 3x3/2 pad 1", "max_pool2d", 32, 64, 112, R=3, stride=2, pad=1)
    roof = dict(peak_flops=66.9e12, peak_source="132 SMs x 128 FP32 lanes (sm_90) x 2 x 1980 MHz",
                bandwidth=2.9e12, bandwidth_source="measured: device-to-device copy of 1024 MiB")

    def contender(label, role, status, times=(), **kw):
        c = runner.Contender(label, role, None, status=status, **kw)
        c.times = [t * 1e-3 for t in times]
        if status in ("ok", "wrong"):
            c.check = dict(ok=status == "ok", max_abs_err=3e-6 if status == "ok" else 0.5, worst=0.1)
        return c
    rows = runner.case_rows(case, [
        contender("direct", "ours", "ok", (2.0, 2.2, 2.1), kernel="gpuconv::conv2d_direct<float>"),
        contender("tiled", "ours", "declined", message="tiled declines this geometry because it must"),
        contender("auto", "ours", "wrong", kernel="gpuconv::conv2d_direct<float>"),
        contender("cuDNN", "peer", "ok", (1.0, 1.1, 0.9)),
        contender("cuDNN TF32", "peer_tf32", "ok", (0.5, 0.5, 0.5)),
    ], roof, "PyTorch, float32, TF32 off")
    pool_kernel = "gpuconv::max_pool2d<float, false, 3, 3>"
    rows += runner.case_rows(pool, [contender("auto", "ours", "ok", (0.5,), kernel=pool_kernel),
                                    contender("cuDNN", "peer", "ok", (0.25,))], roof, "PyTorch, float32, TF32 off")
    return dict(schema=result_files.SCHEMA, date="2026-01-02T03:04:05+00:00", commit="0123456789abcdef", dirty=False,
                device=dict(kind="gpu", name="NVIDIA H100 80GB HBM3", slug="nvidia-h100-80gb-hbm3",
                            compute_capability="9.0", sm_count=132, clock_mhz=1980.0, l2_bytes=50 << 20),
                versions=dict(python="3.11", numpy="2.0", gpuconv="0.1.0", cupy="14.0", cuda_runtime="13.0",
                              driver="13.0", torch="2.9", cudnn="91000"),
                peer=dict(label="cuDNN", missing=None, name="PyTorch 2.9"),
                settings=dict(suite="full", filters={}, repeats=3, algos=["direct", "tiled", "auto"], scaling=None,
                              tolerances=dict(stats.TOLERANCES, tf32=stats.TF32_TOLERANCE), timing="CUDA events",
                              interleaved=True, warmup_calls=3),
                roofline=roof, rows=rows, elapsed_s=60.0)


def test_rows_carry_figures():
    rows = _gpu_like_results()["rows"]
    direct, tiled, auto, pool = rows
    assert direct["ours"]["median_ms"] == pytest.approx(2.1)
    assert direct["ours"]["flop_per_s"] == pytest.approx(direct["flops"] / 2.1e-3)
    bound = max(direct["flops"] / 66.9e12, direct["bytes"] / 2.9e12)
    assert direct["ours"]["roofline_fraction"] == pytest.approx(bound / 2.1e-3)
    assert direct["speed_vs_peer"] == pytest.approx(1.0 / 2.1)
    assert direct["speed_vs_peer_tf32"] == pytest.approx(0.5 / 2.1)
    assert direct["kernel"] == "gpuconv::conv2d_direct<float>"
    assert tiled["status"] == "declined" and "median_ms" not in tiled["ours"] and tiled["speed_vs_peer"] is None
    assert auto["status"] == "wrong" and auto["speed_vs_peer"] is None
    assert pool["metric"] == "B/s" and pool["peer_tf32"] is None
    assert pool["ours"]["roofline_fraction"] == pytest.approx(pool["bytes"] / 2.9e12 / 0.5e-3)
    json.dumps(rows)  # JSON-ready
    assert [r["algo"] for r in runner.failed(_gpu_like_results())] == ["auto"]


def test_render_markdown_gpu_like():
    md = render.render_markdown(_gpu_like_results(), level=2, image="x.png")
    assert md.startswith("## gpuconv bench: NVIDIA H100 80GB HBM3, 2026-01-02\n")
    assert "| layer | shape | dtype | algo | kernel | ours ms | ours speed | roofline | cuDNN ms | cuDNN TF32 ms " \
           "| vs cuDNN | vs cuDNN TF32 | check |" in md
    assert "sm_90, 132 SMs, 1980 MHz" in md and "PyTorch 2.9 (cuDNN 91000)" in md and "`0123456789`" in md
    assert "declined" in md and "tiled declines this geometry because it must" in md
    assert "**WRONG**" in md and "0.48×" in md and "![" in md
    lines = [ln for ln in md.splitlines() if ln.startswith("| ResNet")]
    assert len(lines) == 3 and all(ln.count(" | ") == lines[0].count(" | ") for ln in lines)


def test_write_results_and_update_readme(tmp_path):
    results = _gpu_like_results()
    paths = result_files.write_results(results, tmp_path / "results", plot=False)
    assert paths["json"].name == "nvidia-h100-80gb-hbm3.json" and paths["md"].exists()
    loaded = json.loads(paths["json"].read_text())
    assert loaded["rows"][0]["ours"]["median_ms"] == pytest.approx(2.1)
    # quick / filtered runs never reach the README
    quick = dict(_gpu_like_results(), settings=dict(results["settings"], suite="quick"))
    assert result_files.write_results(quick, tmp_path / "results", plot=False)["json"].name.endswith("-quick.json")
    readme = tmp_path / "README.md"
    start, end = readme_tool.README_START, readme_tool.README_END
    readme.write_text(f"# x\n\nintro\n\n## Benchmarks\n\n{start}\nold\n{end}\n\n## After\n")
    assert readme_tool.update_readme(readme, tmp_path / "results")
    text = readme.read_text()
    assert text.startswith("# x\n\nintro\n\n## Benchmarks\n\n") and text.endswith(f"{end}\n\n## After\n")
    assert "old" not in text and "### gpuconv bench: NVIDIA H100 80GB HBM3, 2026-01-02" in text
    assert text.count("### gpuconv bench") == 1  # the quick file is left out
    assert not readme_tool.update_readme(readme, tmp_path / "results")  # idempotent
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="markers"):
        readme_tool.update_readme(readme, tmp_path / "results")


def test_plot_is_optional(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails
    results = _gpu_like_results()
    paths = result_files.write_results(results, tmp_path, plot=True)
    assert "png" not in paths and "matplotlib is not installed" in paths["md"].read_text()


def test_plot(tmp_path):
    pytest.importorskip("matplotlib")
    paths = result_files.write_results(_gpu_like_results(), tmp_path, plot=True)
    assert paths["png"].stat().st_size > 1000 and "](nvidia-h100-80gb-hbm3.png)" in paths["md"].read_text()


def test_render_rewrites_a_results_file(tmp_path, monkeypatch):
    """`bench --render JSON`: results written where matplotlib was missing (a GPU machine) get their plot
    and Markdown here, figures untouched; --update-readme regenerates the README from --out."""
    with monkeypatch.context() as m:  # restores sys.modules' own entry (a loaded matplotlib stays loaded)
        m.setitem(sys.modules, "matplotlib", None)
        there = result_files.write_results(_gpu_like_results(), tmp_path / "there", plot=True)
    assert "png" not in there and "matplotlib is not installed" in there["md"].read_text()
    plotted = importlib.util.find_spec("matplotlib") is not None
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{readme_tool.README_START}\nold\n{readme_tool.README_END}\n")
    monkeypatch.setattr(bench_cli, "REPO_ROOT", tmp_path)
    args = ["bench", "--render", str(there["json"]), "--out", str(tmp_path / "here"), "--update-readme"]
    assert cli(args) == 0
    md = (tmp_path / "here" / "nvidia-h100-80gb-hbm3.md").read_text()
    assert ("](nvidia-h100-80gb-hbm3.png)" in md) == plotted and ("matplotlib is not installed" in md) != plotted
    before, after = (json.loads(p.read_text()) for p in (there["json"], tmp_path / "here" / there["json"].name))
    assert after["rows"] == before["rows"] and after["commit"] == before["commit"]
    assert "old" not in readme.read_text() and "NVIDIA H100 80GB HBM3, 2026-01-02" in readme.read_text()
    (tmp_path / "bad.json").write_text(json.dumps(dict(schema=result_files.SCHEMA + 1)))
    assert cli(["bench", "--render", str(tmp_path / "bad.json"), "--out", str(tmp_path / "x")]) == 2
    assert cli(["bench", "--render", str(tmp_path / "missing.json"), "--out", str(tmp_path / "x")]) == 2


def test_update_readme_needs_a_checkout(tmp_path, monkeypatch, capsys):
    """--update-readme runs the checkout's bench/update_readme.py; where there is none (an installed
    wheel), it says so and fails, after writing the results."""
    there = result_files.write_results(_gpu_like_results(), tmp_path / "there", plot=False)
    monkeypatch.setattr(bench_cli, "README_TOOL", tmp_path / "bench" / "update_readme.py")
    args = ["bench", "--render", str(there["json"]), "--out", str(tmp_path / "here"), "--no-plot",
            "--update-readme"]
    assert cli(args) == 2
    assert "--update-readme needs a source checkout" in capsys.readouterr().err
    assert (tmp_path / "here" / there["json"].name).exists()


# --------------------------------------------------------------------------------------------
# CPU-mode runs through the command line
# --------------------------------------------------------------------------------------------

TINY = [suite.Case("tiny conv", "conv2d", 2, 3, 12, 4, 3, 1, 1),
        suite.Case("tiny dw", "conv2d", 2, 4, 10, 4, 3, 2, 1, groups=4),
        suite.Case("tiny max-pool", "max_pool2d", 2, 3, 8, R=3, stride=2, pad=1),
        suite.Case("tiny global avg-pool", "adaptive_avg_pool2d", 2, 5, 4, R=1),
        suite.Case("tiny conv", "conv2d", 2, 3, 12, 4, 3, 1, 1, dtype="float16")]


@pytest.fixture
def tiny(monkeypatch):
    """The tiny suite, and cheap roofline measurements."""
    monkeypatch.setattr(bench_cli, "build_suite", lambda quick=False, cpu=False: list(TINY))
    monkeypatch.setattr(platforms, "measure_cpu_gemm", lambda: (1e10, 64))
    monkeypatch.setattr(platforms, "measure_cpu_bandwidth", lambda: (1e10, 1 << 20))
    monkeypatch.setattr(platforms.CpuPlatform, "settle_s", 0.0)


def _run(tmp_path, *args):
    code = cli(["bench", "--device", "cpu", "--repeats", "2", "--out", str(tmp_path), "--no-plot", *args])
    files = sorted(tmp_path.glob("*.json"))
    assert len(files) == 1
    return code, json.loads(files[0].read_text()), files[0].with_suffix(".md").read_text()


def _assert_structure(results):
    for key in ("schema", "date", "commit", "dirty", "device", "versions", "peer", "settings", "roofline", "rows",
                "elapsed_s"):
        assert key in results
    assert results["device"]["kind"] == "cpu" and results["device"]["cores"] >= 1
    assert {"python", "numpy", "gpuconv"} <= set(results["versions"])
    assert results["settings"]["interleaved"] is False and "divided by 16" in results["settings"]["scaling"]
    for r in results["rows"]:
        for key in ("layer", "dtype", "shape", "algo", "status", "kernel", "flops", "bytes", "metric", "ours",
                    "peer", "peer_tf32", "speed_vs_peer"):
            assert key in r


@needs_torch
def test_cpu_run_checks_every_row(tmp_path, tiny, capsys):
    code, results, md = _run(tmp_path)
    assert code == 0
    _assert_structure(results)
    rows = results["rows"]
    assert [(r["layer"], r["dtype"]) for r in rows] == [(c.name, c.dtype) for c in TINY]
    for r in rows:
        assert r["status"] == "ok" and r["check"]["ok"] and r["check"]["max_abs_err"] <= r["check"]["atol"] * 2
        assert r["reference"].startswith("PyTorch") and r["peer"]["status"] == "ok" and r["peer"]["check"]["ok"]
        assert r["ours"]["n"] == 2 and r["peer"]["n"] == 2 and r["speed_vs_peer"] > 0
        assert r["kernel"].startswith("numpy_") and r["peer_tf32"] is None
    assert rows[1]["kernel"] == "numpy_shift_accumulate" and rows[1]["metric"] == "B/s"
    assert results["versions"]["torch"] == torch.__version__
    assert "| layer | shape | dtype | algo | kernel | ours ms |" in md and "PyTorch ms" in md and "TF32" not in md
    assert "gpuconv bench" in capsys.readouterr().err  # progress on stderr


@needs_torch
def test_cpu_run_fails_a_wrong_row(tmp_path, tiny, monkeypatch):
    real = gpuconv.conv2d
    monkeypatch.setattr(gpuconv, "conv2d", lambda *a, **k: real(*a, **k) + 1)
    code, results, md = _run(tmp_path, "--layers", "tiny conv", "--dtype", "float32")
    assert code == 1
    (row,) = results["rows"]
    assert row["status"] == "wrong" and not row["check"]["ok"]
    assert "median_ms" not in row["ours"] and row["speed_vs_peer"] is None  # not timed
    assert row["peer"]["status"] == "ok" and row["peer"]["median_ms"] > 0
    assert "**WRONG**" in md
    assert results["settings"]["filters"] == {"layers": ["tiny conv"], "dtype": ["float32"]}


def test_cpu_run_without_torch(tmp_path, tiny, monkeypatch):
    monkeypatch.setattr(bench_cli, "import_torch", lambda kind: (None, "PyTorch is not installed (pip install torch): "
                                                                       "ours ran alone"))
    code, results, md = _run(tmp_path)
    assert code == 0
    _assert_structure(results)
    assert results["peer"]["missing"].startswith("PyTorch is not installed")
    for r in results["rows"]:
        assert r["status"] == "unchecked" and r["peer"] is None and r["ours"]["median_ms"] > 0
    assert "**Peer missing**" in md and "unchecked" in md


def test_cli_list_and_bad_algo(capsys, tmp_path):
    assert cli(["bench", "--device", "cpu", "--list", "--layers", "lenet-5"]) == 0
    assert "LeNet-5 conv1" in capsys.readouterr().out
    assert cli(["bench", "--device", "cpu", "--algos", "tiled", "--out", str(tmp_path)]) == 2
    assert "available: auto" in capsys.readouterr().err
    assert cli(["bench", "--device", "cpu", "--layers", "no such layer"]) == 2


def test_cli_targets_and_rounds_options(capsys, tmp_path):
    assert cli(["bench", "--device", "cpu", "--targets", "--list"]) == 0
    out = capsys.readouterr().out
    assert "LeNet conv2" in out and "+bias" in out and "ResNet" not in out
    assert cli(["bench", "--device", "cpu", "--rounds", "0", "--out", str(tmp_path)]) == 2
    assert "--rounds must be at least 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli(["bench", "--quick", "--targets"])


@needs_torch
def test_cpu_targets_run(tmp_path, monkeypatch):
    """``--targets --rounds``: the NumPy path's layers with a bias, checked against PyTorch (bias included),
    timed in alternating rounds; the Markdown reports the goals; the file is named for its suite."""
    monkeypatch.setattr(platforms, "measure_cpu_gemm", lambda: (1e10, 64))
    monkeypatch.setattr(platforms, "measure_cpu_bandwidth", lambda: (1e10, 1 << 20))
    monkeypatch.setattr(platforms.CpuPlatform, "settle_s", 0.0)
    code, results, md = _run(tmp_path, "--targets", "--rounds", "2", "--layers", "LeNet,max-pool")
    assert code == 0 and results["settings"]["suite"] == "targets" and results["settings"]["scaling"] is None
    assert [r["layer"] for r in results["rows"]] == ["LeNet conv1", "LeNet conv2", "max-pool 3x3/2 pad 1"]
    for r in results["rows"]:
        assert r["status"] == "ok" and r["peer"]["status"] == "ok" and r["ours"]["n"] == 2 == r["peer"]["n"]
        assert r["case"].get("bias", False) == (r["op"] == "conv2d")
    assert "2 rounds" in results["settings"]["timing"]
    assert "Targets of the NumPy path, time ours / PyTorch" in md and "max-pool" in md.split("Targets")[-1]
    assert next(tmp_path.glob("*.json")).name.endswith("-targets-partial.json")


@needs_torch
def test_quick_smoke(tmp_path):
    """The README's command on a machine without a GPU, with one repetition."""
    code, results, md = _run(tmp_path, "--quick", "--repeats", "1")
    assert code == 0
    assert results["settings"]["suite"] == "quick" and len(results["rows"]) == len(suite.QUICK)
    assert all(r["status"] == "ok" for r in results["rows"])


TINY_ND = [suite.Case("tiny conv1d", "conv1d", 2, 6, 37, 4, 3, 2, 4, 2, dilation=4),
           suite.Case("tiny dw conv1d", "conv1d", 2, 5, 23, 5, 7, 1, 3, 5),
           suite.Case("tiny conv3d", "conv3d", 2, 3, (5, 9, 7), 4, 3, (1, 2, 1), 1),
           suite.Case("tiny conv3d", "conv3d", 1, 3, (5, 9, 7), 4, (1, 3, 3), 1, (0, 1, 1), dtype="float16"),
           suite.Case("tiny max-pool3d", "max_pool3d", 2, 3, (4, 9, 8), R=(1, 2, 2), stride=(1, 2, 2))]


@needs_torch
def test_cpu_run_checks_nd_rows(tmp_path, tiny, monkeypatch):
    """1-D and 3-D rows run through the command line on the CPU: each checked against PyTorch (F.conv1d /
    F.conv3d / F.max_pool3d) before it is timed, the kernels gpuconv.last_kernel() names in the table."""
    monkeypatch.setattr(bench_cli, "build_suite", lambda quick=False, cpu=False: list(TINY_ND))
    code, results, md = _run(tmp_path)
    assert code == 0
    _assert_structure(results)
    rows = results["rows"]
    assert [(r["layer"], r["op"], r["dtype"]) for r in rows] == [(c.name, c.op, c.dtype) for c in TINY_ND]
    for r, c in zip(rows, TINY_ND):
        assert r["status"] == "ok" and r["check"]["ok"] and r["peer"]["status"] == "ok" and r["ours"]["n"] == 2
        assert r["flops"] == c.flops and r["bytes"] == c.nbytes and r["shape"] == c.shape_label
        assert r["case"]["H"] == (list(c.H) if isinstance(c.H, tuple) else c.H)
        assert f"| {r['layer']} | {r['shape']} | {r['dtype']} | auto | `{r['kernel']}` |" in md
    assert rows[0]["kernel"].startswith("conv1d as conv2d of height 1: numpy_")
    assert rows[0]["case"]["dilation"] == 4 and rows[1]["metric"] == "B/s"
    assert rows[2]["kernel"].startswith("numpy_") and "3d" in rows[2]["kernel"]
    assert rows[4]["kernel"] == "numpy_max_pool3d"


@needs_torch
def test_cpu_run_fails_a_wrong_nd_row(tmp_path, tiny, monkeypatch):
    real = gpuconv.conv3d
    monkeypatch.setattr(gpuconv, "conv3d", lambda *a, **k: real(*a, **k) * 1.01)
    monkeypatch.setattr(bench_cli, "build_suite", lambda quick=False, cpu=False: list(TINY_ND))
    code, results, md = _run(tmp_path, "--layers", "tiny conv3d", "--dtype", "float32")
    assert code == 1 and [r["status"] for r in results["rows"]] == ["wrong"]


@needs_torch
def test_suite_nd_row_on_the_cpu(tmp_path, monkeypatch):
    """A real row of the suite at its CPU size (the cheapest one), through the command line."""
    monkeypatch.setattr(platforms, "measure_cpu_gemm", lambda: (1e10, 64))
    monkeypatch.setattr(platforms, "measure_cpu_bandwidth", lambda: (1e10, 1 << 20))
    monkeypatch.setattr(platforms.CpuPlatform, "settle_s", 0.0)
    code, results, md = _run(tmp_path, "--layers", "Conformer dw conv1d", "--repeats", "1")
    assert code == 0
    (row,) = results["rows"]
    assert row["status"] == "ok" and row["shape"] == "2x256x512, 256x31/1 p15 g256" and row["metric"] == "B/s"
    assert row["kernel"].startswith("conv1d as conv2d of height 1: ") and row["peer"]["status"] == "ok"


# --------------------------------------------------------------------------------------------
# the GPU rows' logic on the CPU emulator of our CUDA kernels
# --------------------------------------------------------------------------------------------

def _emulated_platform():
    """The CPU platform with our CUDA kernels run by the emulator (every algorithm of ours, no roofline)."""
    from gpuconv._backend import CudaBackend, use_backend
    from tests.runners import emulated_runtime

    class EmulatedPlatform(platforms.CpuPlatform):
        warmup = 1
        settle_s = 0.0

        def session(self):
            return use_backend(CudaBackend(emulated_runtime()))

        def conv_algos(self):
            return environment.cuda_conv_algos()

        def roofline(self):
            return dict(peak_flops=None, peak_source="n/a", bandwidth=None, bandwidth_source="n/a")

    return EmulatedPlatform(torch)


@pytest.mark.emulated
@needs_torch
def test_gpu_row_logic_on_the_emulator(tmp_path):
    """Every algorithm of ``gpuconv._cuda.conv.OP.names`` + auto gets a row; an algorithm that declines a
    geometry by its rule (tiled: a halo that does not fit in shared memory) gets a "declined" row, not a
    crash, and 'auto' runs what the heuristic picks (the emulator cannot time kernels)."""
    cases = [suite.Case("small", "conv2d", 1, 2, 6, 2, 3, 1, 1),
             suite.Case("huge stride", "conv2d", 1, 1, 40, 2, 16, 8, 0)]
    plat = _emulated_platform()
    algos = plat.conv_algos()
    assert "auto" in algos and len(algos) >= 2
    results = runner.run_bench(plat, cases, algos, 1, suite="full")
    rows = {(r["layer"], r["algo"]): r for r in results["rows"]}
    assert len(rows) == 2 * len(algos)
    from gpuconv._cuda import select as cuda_select
    for (layer, algo), r in rows.items():
        case = next(c for c in cases if c.name == layer)
        geom = conv_geometry(case.input_shape, case.weight_shape, None, case.stride, case.pad, 1, case.groups)
        if algo != "auto" and cuda_select.decline_reason(algo, geom, np.float32) is not None:
            # e.g. tiled for the huge stride (shared memory), depthwise / gemm1x1 outside their kind
            assert r["status"] == "declined" and f"{algo} declines" in r["message"], r
        else:
            assert r["status"] == "ok", r
            assert r["kernel"].startswith("gpuconv::conv2d_")
    assert rows["huge stride", "tiled"]["status"] == "declined"
    assert "shared memory" in rows["huge stride", "tiled"]["message"]
    huge = conv_geometry(cases[1].input_shape, cases[1].weight_shape, None, cases[1].stride, cases[1].pad)
    huge_algo = cuda_select.choose_algo(huge, np.float32)
    assert rows["huge stride", "auto"]["kernel"].startswith(f"gpuconv::conv2d_{huge_algo}<")
    md = render.render_markdown(results)
    assert "declined" in md
    assert math.isfinite(rows["small", "auto"]["speed_vs_peer"])


@pytest.mark.emulated
@needs_torch
def test_gpu_nd_rows_on_the_emulator():
    """The 1-D and 3-D rows on the CUDA path (emulated): a row per algorithm of ours, each the 2-D algorithm
    the lowering runs (declined where that algorithm declines the 2-D convolutions), checked against
    PyTorch; max_pool3d's one kernel as 'auto'; the kernel names say the lowering and the CUDA kernel."""
    cases = [suite.Case("c1", "conv1d", 1, 3, 11, 4, 3, 2, 2, dilation=2),
             suite.Case("c3", "conv3d", 1, 2, (3, 5, 4), 3, 3, 1, 1),
             suite.Case("p3", "max_pool3d", 1, 2, (3, 4, 4), R=(1, 2, 2), stride=(1, 2, 2))]
    plat = _emulated_platform()
    algos = plat.conv_algos()
    results = runner.run_bench(plat, cases, algos, 1, suite="full")
    rows = {(r["layer"], r["algo"]): r for r in results["rows"]}
    assert len(rows) == 2 * len(algos) + 1
    for (layer, algo), r in rows.items():
        if r["status"] == "declined":
            assert algo != "auto" and f"{algo} declines" in r["message"], r
            continue
        assert r["status"] == "ok" and r["check"]["ok"] and r["peer"]["status"] == "ok", r
        assert "gpuconv::" in r["kernel"]
    assert rows["c1", "auto"]["kernel"].startswith("gpuconv::conv1d_igemm<")  # one 1-D launch (issue 18)
    assert rows["c1", "direct"]["kernel"].startswith("conv1d as conv2d of height 1: gpuconv::conv2d_direct<")
    assert rows["c3", "auto"]["kernel"].startswith("gpuconv::conv3d_igemm<")  # one 3-D launch (issue 18)
    assert rows["c3", "direct"]["kernel"].startswith("conv3d depth-tap lowering (")  # a 2-D algorithm per tap
    assert rows["c3", "direct"]["status"] == "ok" and rows["p3", "auto"]["status"] == "ok"


class FakeCupy:
    """Just enough of CuPy, on NumPy, for GpuPlatform: device attributes, a stream, events (host clock), a
    RawKernel, the memory pool. Records the order of flushes, spins and event records in ``log``."""

    __version__ = "fake"
    float32, int32 = np.float32, np.int32
    L2 = 1 << 20

    def __init__(self):
        log = self.log = []

        class Logged(np.ndarray):
            def fill(self, value):
                log.append("flush")
                super().fill(value)

        class Device:
            def __init__(self, i=None):
                self.id = 0

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

        class Stream(Device):
            ptr = 1234

            def __init__(self, non_blocking=False):
                pass

            def synchronize(self):
                pass

        class Event:
            def record(self, stream=None):
                log.append("event")
                self.t = time.perf_counter()

            def synchronize(self):
                pass

        class RawKernel:
            def __init__(self, code, name):
                assert "clock64" in code

            def __call__(self, grid, block, args):
                assert grid == (1,) and block == (1,) and args[0].dtype == np.int64
                log.append("spin")

        class RandomState:
            def __init__(self, seed):
                self.rng = np.random.default_rng(seed)

            def standard_normal(self, shape, dtype=float):
                return self.rng.standard_normal(shape, dtype=dtype)

        attrs = {13: 1_980_000, 16: 132, 38: self.L2, 75: 9, 76: 0}
        runtime = types.SimpleNamespace(
            deviceGetAttribute=lambda a, d: attrs[a], runtimeGetVersion=lambda: 13000, driverGetVersion=lambda: 13000,
            getDeviceProperties=lambda d: {"name": b"Fake H100", "totalGlobalMem": 80 << 30},
            memGetInfo=lambda: (256 << 20, 80 << 30))
        self.cuda = types.SimpleNamespace(Device=Device, Stream=Stream, Event=Event, runtime=runtime,
                                          get_elapsed_time=lambda a, b: (b.t - a.t) * 1e3)
        self.RawKernel, self.random = RawKernel, types.SimpleNamespace(RandomState=RandomState)
        self.empty = lambda n, dtype: np.empty(n, dtype).view(Logged)
        self.ones, self.empty_like, self.copyto = np.ones, np.empty_like, np.copyto
        self.asarray, self.asnumpy = np.asarray, np.asarray
        self.get_default_memory_pool = lambda: types.SimpleNamespace(free_all_blocks=lambda: None)


@pytest.mark.emulated
def test_gpu_platform_with_a_fake_cupy(monkeypatch):
    """GpuPlatform's own code (attributes, roofline, L2 flush, spin, events, interleaving, the NumPy-path
    reference without torch) driven through a NumPy-backed fake CuPy, our CUDA kernels run by the emulator."""
    from gpuconv._backend import CudaBackend, use_backend
    from tests.runners import emulated_runtime

    fake = FakeCupy()
    monkeypatch.setitem(sys.modules, "cupy", fake)
    plat = platforms.GpuPlatform(None)
    assert plat.flush_bytes == 2 * FakeCupy.L2 and plat.flush_buffer.nbytes >= plat.flush_bytes
    assert plat.spin_cycles == platforms.SPIN_US * 1980
    cases = [suite.Case("small", "conv2d", 1, 2, 6, 2, 3, 1, 1),
             suite.Case("pool", "max_pool2d", 1, 2, 6, R=2, stride=2)]
    with use_backend(CudaBackend(emulated_runtime())):
        results = runner.run_bench(plat, cases, plat.conv_algos(), 2, suite="full", peer_missing="no torch")
    assert results["device"]["compute_capability"] == "9.0" and results["versions"]["cuda_runtime"] == "13.0"
    assert results["roofline"]["peak_flops"] == pytest.approx(132 * 128 * 2 * 1.98e9)
    assert results["settings"]["l2_flush_bytes"] == 2 * FakeCupy.L2 and results["settings"]["interleaved"]
    rows = results["rows"]
    assert [r["algo"] for r in rows] == environment.cuda_conv_algos() + ["auto"]
    ok = [r for r in rows if r["status"] == "ok"]
    for r in rows:
        if r["status"] == "declined":  # a specialized algorithm outside its kind (depthwise, gemm1x1)
            assert r["algo"] in ("depthwise", "gemm1x1") and f"{r['algo']} declines" in r["message"]
            continue
        assert r["status"] == "ok" and r["reference"].startswith("gpuconv's NumPy path") and r["peer"] is None
        assert r["ours"]["n"] == 2 and r["kernel"].startswith("gpuconv::")
    assert {"direct", "tiled", "auto"} <= {r["algo"] for r in ok}
    # every timed call: flush, spin, start event, (the call), end event
    timed = "".join("F" if e == "flush" else "S" if e == "spin" else "E" for e in fake.log)
    assert "FSEE" * (2 * len(ok)) in timed


def test_git_state_outside_git(tmp_path, monkeypatch):
    """A copy of the tree without .git (a lent GPU machine) records the commit named by
    GPUCONV_BENCH_COMMIT, else none; inside this checkout, git's own answer wins over the variable."""
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))  # git must not find a parent repo
    monkeypatch.delenv("GPUCONV_BENCH_COMMIT", raising=False)
    assert environment.git_state(tmp_path) == dict(commit=None, dirty=None)
    monkeypatch.setenv("GPUCONV_BENCH_COMMIT", "0123abcd")
    assert environment.git_state(tmp_path) == dict(commit="0123abcd", dirty=None)
    inside = environment.git_state()
    if inside["commit"] is not None:  # a checkout (CI clones one)
        assert inside["commit"] != "0123abcd" and len(inside["commit"]) == 40


# --------------------------------------------------------------------------------------------
# a short GPU window: time budget, results written as the run goes, PyTorch's TF32 switches
# --------------------------------------------------------------------------------------------

def _slow_cases(monkeypatch, seconds, fail_at=None):
    """run_case replaced by a sleep of ``seconds`` giving one fake row (or raising KeyboardInterrupt,
    as a killed run would stop, at case number ``fail_at``)."""
    done = []

    def run_case(plat, case, algos, repeats, roof, seed=0):
        done.append(case.name)
        if fail_at is not None and len(done) == fail_at:
            raise KeyboardInterrupt
        time.sleep(seconds)
        ours = runner.Contender("auto", "ours", None, status="ok", kernel="fake",
                                check=dict(ok=True, max_abs_err=0.0, worst=0.0))
        ours.times = [max(seconds, 1e-3)]
        return runner.case_rows(case, [ours], roof, "none")
    monkeypatch.setattr(runner, "run_case", run_case)
    return done


def test_budget_stops_before_a_case_that_would_not_fit(tiny, monkeypatch):
    """With a budget, a case starts only while the time spent plus the longest case so far fits; the
    results name the cases left out. The checkpoint sees the results after the set-up and after every case."""
    done = _slow_cases(monkeypatch, 0.3)
    seen = []
    results = runner.run_bench(platforms.CpuPlatform(None), list(TINY), ["auto"], 1, suite="full", budget_s=0.5,
                               checkpoint=lambda r: seen.append((r["state"], r["cases_done"], len(r["rows"]))))
    assert done == [TINY[0].name]
    assert seen == [("running", 0, 0), ("running", 1, 1)]
    assert results["state"] == "budget" and results["cases_done"] == 1 and results["cases_total"] == len(TINY)
    assert results["cases_not_run"] == [f"{c.name} ({c.dtype})" for c in TINY[1:]]
    assert results["settings"]["budget_s"] == 0.5
    md = render.render_markdown(results)
    assert f"**Incomplete run**: 1 of {len(TINY)} cases, stopped by its time budget of 0.5 s" in md


def test_budget_spent_on_start_up_still_runs_the_first_case(tiny, monkeypatch):
    """A loaded machine can spend the whole budget on the roofline measurement: the first case still
    runs (a results file without rows says nothing), the rest are left out."""
    done = _slow_cases(monkeypatch, 0.0)
    roofline = platforms.CpuPlatform.roofline

    def slow_roofline(self):
        time.sleep(0.3)
        return roofline(self)
    monkeypatch.setattr(platforms.CpuPlatform, "roofline", slow_roofline)
    results = runner.run_bench(platforms.CpuPlatform(None), list(TINY), ["auto"], 1, suite="full", budget_s=0.1)
    assert done == [TINY[0].name] and results["cases_done"] == 1 and len(results["rows"]) == 1
    assert results["state"] == "budget" and len(results["cases_not_run"]) == len(TINY) - 1


def test_without_a_budget_every_case_runs(tiny, monkeypatch):
    done = _slow_cases(monkeypatch, 0.0)
    results = runner.run_bench(platforms.CpuPlatform(None), list(TINY), ["auto"], 1, suite="full")
    assert done == [c.name for c in TINY] and results["state"] == "done" and results["cases_not_run"] == []
    assert "Incomplete" not in render.render_markdown(results)


def test_an_interrupted_run_leaves_valid_json(tmp_path, tiny, monkeypatch):
    """The CLI rewrites the JSON after every case: a run stopped during its second case leaves a valid file
    with the first case's rows, which renders as an incomplete run."""
    _slow_cases(monkeypatch, 0.0, fail_at=2)
    with pytest.raises(KeyboardInterrupt):
        cli(["bench", "--device", "cpu", "--repeats", "1", "--out", str(tmp_path), "--no-plot"])
    (path,) = tmp_path.glob("*.json")  # no temporary file left beside it
    results = json.loads(path.read_text())
    assert results["state"] == "running" and results["cases_done"] == 1 and len(results["rows"]) == 1
    assert "ended before it finished" in render.render_markdown(results)


def test_budget_must_be_positive(tmp_path, capsys):
    assert cli(["bench", "--device", "cpu", "--budget-s", "0", "--out", str(tmp_path)]) == 2
    assert "--budget-s must be positive" in capsys.readouterr().err


class _LegacyFlags:
    """PyTorch's legacy TF32 flags; reading one after the new API set a flag raises, as PyTorch 2.9+ does."""

    def __init__(self, forbid=False):
        object.__setattr__(self, "forbid", forbid)
        object.__setattr__(self, "values", {})

    def __getattr__(self, name):
        if name == "allow_tf32":
            if self.forbid:
                raise RuntimeError("a mix of the legacy and new APIs")
            return self.values.get(name, True)
        raise AttributeError(name)

    def __setattr__(self, name, value):
        if name != "allow_tf32":
            return object.__setattr__(self, name, value)
        if self.forbid:
            raise RuntimeError("a mix of the legacy and new APIs")
        self.values[name] = value


def _fake_torch(new_api: bool):
    cudnn, matmul = _LegacyFlags(forbid=new_api), _LegacyFlags(forbid=new_api)
    if new_api:
        cudnn.conv = types.SimpleNamespace(fp32_precision="none")
        matmul.fp32_precision = "none"
    return types.SimpleNamespace(backends=types.SimpleNamespace(cudnn=cudnn, cuda=types.SimpleNamespace(matmul=matmul)))


def test_tf32_new_api_is_used_alone():
    """PyTorch 2.9+: only cudnn.conv.fp32_precision / cuda.matmul.fp32_precision are read and written (the
    fake raises on any legacy flag), and the state saved before the run is restored exactly."""
    t = _fake_torch(new_api=True)
    saved = peers.tf32_state(t)
    assert saved == ("precision", "none", "none")
    peers.set_tf32(t, True)
    assert (t.backends.cudnn.conv.fp32_precision, t.backends.cuda.matmul.fp32_precision) == ("tf32", "tf32")
    peers.set_tf32(t, False)
    assert (t.backends.cudnn.conv.fp32_precision, t.backends.cuda.matmul.fp32_precision) == ("ieee", "ieee")
    peers.restore_tf32_state(t, saved)
    assert (t.backends.cudnn.conv.fp32_precision, t.backends.cuda.matmul.fp32_precision) == ("none", "none")


def test_tf32_legacy_api_on_older_pytorch():
    t = _fake_torch(new_api=False)
    saved = peers.tf32_state(t)
    assert saved == ("allow", True, True)
    peers.set_tf32(t, False)
    assert t.backends.cudnn.values["allow_tf32"] is False and t.backends.cuda.matmul.values["allow_tf32"] is False
    peers.restore_tf32_state(t, saved)
    assert t.backends.cudnn.values["allow_tf32"] is True and t.backends.cuda.matmul.values["allow_tf32"] is True


@needs_torch
def test_tf32_on_the_installed_pytorch():
    """The real PyTorch here: the switch round-trips without PyTorch's mixed-API error."""
    saved = peers.tf32_state(torch)
    try:
        peers.set_tf32(torch, False)
        peers.set_tf32(torch, True)
    finally:
        peers.restore_tf32_state(torch, saved)
    assert peers.tf32_state(torch) == saved


def _torch_choosing(backend):
    name = f"_ConvBackend.{backend}"  # how PyTorch prints its enum value
    return types.SimpleNamespace(_C=types.SimpleNamespace(_select_conv_backend=lambda *a: type(
        "B", (), {"__str__": lambda self: name})()))


def test_peer_label_names_pytorchs_own_depthwise_kernel():
    """On a GPU the peer column is cuDNN, but PyTorch runs float32 depthwise layers on its own kernel: the
    row's peer says so (asked of PyTorch's dispatcher), and the table marks the time and explains it."""
    gpu = types.SimpleNamespace(kind="gpu", peer_label="cuDNN")
    dw = suite.Case("MobileNetV2 dw 144", "conv2d", 32, 144, 56, 144, 3, 1, 1, 144)
    dense = suite.Case("ResNet-50 3x3", "conv2d", 32, 64, 56, 64, 3, 1, 1)
    gpu.torch = _torch_choosing("CudaDepthwise2d")
    assert peers.peer_label(gpu, dw, None, None) == "PyTorch CudaDepthwise2d"
    gpu.torch = _torch_choosing("Cudnn")
    assert peers.peer_label(gpu, dense, None, None) == "cuDNN"
    gpu.torch = types.SimpleNamespace(_C=types.SimpleNamespace())  # a PyTorch that cannot say
    assert peers.peer_label(gpu, dw, None, None) == "cuDNN"
    cpu = types.SimpleNamespace(kind="cpu", peer_label="PyTorch", torch=_torch_choosing("Mkldnn"))
    assert peers.peer_label(cpu, dense, None, None) == "PyTorch"

    results = _gpu_like_results()
    results["rows"][0]["peer"] = dict(results["rows"][0]["peer"], label="PyTorch CudaDepthwise2d")
    md = render.render_markdown(results)
    assert f"{render.OTHER_PEER_MARK} ResNet-50 3x3 (float32): the cuDNN column times PyTorch CudaDepthwise2d" in md
    (row,) = [ln for ln in md.splitlines() if ln.startswith("| ResNet") and "| direct |" in ln]
    assert f" {render.OTHER_PEER_MARK} |" in row


@needs_torch
def test_peer_backend_from_the_installed_pytorch():
    """PyTorch CPU's dispatcher answers for a real call (the GPU machine asks the same function)."""
    case = suite.Case("dw", "conv2d", 1, 4, 8, 4, 3, 1, 1, 4)
    x, w = torch.zeros(case.input_shape), torch.zeros(case.weight_shape)
    backend = peers.torch_conv_backend(torch, case, x, w)
    assert backend is None or (backend.isidentifier() and "." not in backend)


def test_run_time_is_in_seconds_when_short():
    results = _gpu_like_results()
    results["elapsed_s"] = 7.2
    assert "the run took 7 s." in render.render_markdown(results)
    results["elapsed_s"] = 600.0
    assert "the run took 10.0 min." in render.render_markdown(results)


def test_plot_note_printed_once(tmp_path, tiny, monkeypatch, capsys):
    _slow_cases(monkeypatch, 0.0)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails
    assert cli(["bench", "--device", "cpu", "--repeats", "1", "--out", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert (captured.out + captured.err).count("No plot: matplotlib is not installed") == 1


def test_help_speaks_to_users(capsys):
    with pytest.raises(SystemExit):
        cli(["bench", "--help"])
    text = capsys.readouterr().out
    assert "cuDNN" in text and "--budget-s" in text and "--quick" in text
    for internal in ("scale_for_cpu", "TOLERANCES", "SPIN_US", "gpuconv._cuda", "ALGOS"):
        assert internal not in text


# --------------------------------------------------------------------------------------------
# gradients: the backward rows (--backward)
# --------------------------------------------------------------------------------------------

TINY_BACKWARD = [suite.Case("tiny conv", "conv2d", 2, 3, 12, 4, 3, 1, 1, direction="backward_data"),
                 suite.Case("tiny conv", "conv2d", 2, 3, 12, 4, 3, 1, 1, direction="backward_filter"),
                 suite.Case("tiny dw", "conv2d", 2, 4, 10, 4, 3, 2, 1, groups=4, direction="backward_filter"),
                 suite.Case("tiny max-pool", "max_pool2d", 2, 3, 8, R=3, stride=2, pad=1, direction="backward"),
                 suite.Case("tiny avg-pool", "avg_pool2d", 2, 3, 8, R=2, stride=2, direction="backward"),
                 suite.Case("tiny global avg-pool", "adaptive_avg_pool2d", 2, 5, 4, R=1, direction="backward")]


def test_backward_suite():
    cases = suite.build_backward()
    n_conv, n_pool = len(suite.CONV_LAYERS), len(suite.POOL_LAYERS)
    nd_conv = [layer for layer in suite.ND_LAYERS if layer[1].startswith("conv")]
    assert len(cases) == 2 * n_conv + n_pool + 2 * len(nd_conv) + len(suite.ND_LAYERS) - len(nd_conv)
    # the 1-D / 3-D layers after the 2-D ones, data and filter rows for each convolution, as the forward suite
    nd = [c for c in cases if c.dims != 2]
    assert cases[-len(nd):] == nd and [c.name for c in nd[::2][:len(nd_conv)]] == [layer[0] for layer in nd_conv]
    assert [(c.op, c.direction) for c in nd[:2]] == [("conv1d", "backward_data"), ("conv1d", "backward_filter")]
    assert {c.op for c in nd} == {"conv1d", "conv3d", "max_pool3d"}
    forward_nd = {c.name: c for c in suite.build_suite() if c.dims != 2}
    assert all(dataclasses.replace(c, direction="forward") == forward_nd[c.name] for c in nd)
    tcn = next(c for c in nd if c.name == "TCN conv1d k3 d4")
    assert tcn.title == "TCN conv1d k3 d4 backward data" and tcn.record()["dilation"] == 4
    assert all(c.dtype == "float32" and c.is_backward and not c.name.endswith("N=1") for c in cases)
    conv = [c for c in cases if c.is_conv]
    assert [c.direction for c in conv[:2]] == ["backward_data", "backward_filter"]
    assert {c.direction for c in cases if not c.is_conv} == {"backward"}
    assert conv[0].title == "ResNet-50 stem 7x7/2 backward data" and conv[0].record()["direction"] == "backward_data"
    forward = suite.build_suite()
    assert all(not c.is_backward and "direction" not in c.record() and c.title == c.name for c in forward)
    assert not any(c.is_backward for c in suite.build_suite(quick=True))  # --quick stays forward only
    cpu = suite.build_backward(cpu=True)
    assert [(c.N, c.H) for c in cpu] == [(suite.scale_for_cpu(c).N, suite.scale_for_cpu(c).H) for c in cases]
    mp = next(c for c in cases if c.op == "max_pool2d")
    fwd = dataclasses.replace(mp, direction="forward")
    assert mp.nbytes == fwd.nbytes + 8 * math.prod(mp.output_shape) and mp.flops == fwd.flops == 0
    assert conv[0].flops == dataclasses.replace(conv[0], direction="forward").flops


def test_check_close_relative_to_magnitude():
    """A gradient near 0 from terms that cancel passes when its error is small against the terms."""
    ref = np.array([1e-6, 1.0], np.float32)
    out = ref + np.float32(5e-3)
    assert not stats.check_close(out, ref, 1e-3, 1e-3)["ok"]
    chk = stats.check_close(out, ref, 1e-3, 1e-3, magnitude=np.array([10.0, 10.0], np.float32))
    assert chk["ok"] and chk["magnitude_max"] == 10.0
    assert not stats.check_close(out + 1, ref, 1e-3, 1e-3, magnitude=np.array([10.0, 10.0], np.float32))["ok"]


@pytest.fixture
def tiny_backward(tiny, monkeypatch):
    monkeypatch.setattr(bench_cli, "build_backward", lambda cpu=False: list(TINY_BACKWARD))


@needs_torch
def test_cpu_backward_run(tmp_path, tiny_backward):
    """``--backward``: every gradient checked against PyTorch's autograd kernels, then timed; a table of its
    own, the summary line and the NumPy path's bar; the file is named for its suite."""
    code, results, md = _run(tmp_path, "--backward")
    assert code == 0 and results["settings"]["suite"] == "backward"
    _assert_structure(results)
    rows = results["rows"]
    assert [(r["layer"], r["direction"]) for r in rows] == [(c.name, c.direction) for c in TINY_BACKWARD]
    for r, c in zip(rows, TINY_BACKWARD):
        assert r["status"] == "ok" and r["check"]["ok"] and r["check"]["magnitude_max"] > 0, r
        assert r["reference"].startswith("PyTorch autograd") and r["peer"]["status"] == "ok"
        assert r["op"] == c.op and r["case"]["direction"] == c.direction and r["algo"] == "auto"
        assert r["ours"]["n"] == 2 == r["peer"]["n"] and r["speed_vs_peer"] > 0
        assert r["kernel"].startswith("numpy_")
    assert next(tmp_path.glob("*.json")).name.endswith("-backward.json")
    assert "Gradients (backward):" in md and "| layer | shape | dtype | gradient | kernel |" in md
    assert "| layer | shape | dtype | algo |" not in md  # no forward table
    assert "| tiny conv | 2x3x12x12, 4x3x3/1 p1 | float32 | filter |" in md
    ratio = render.geomean([1 / r["speed_vs_peer"] for r in rows])
    assert f"backward: geometric mean of time ours / PyTorch = {ratio:.2f} over {len(rows)} rows" in md
    assert "within 2x of PyTorch CPU in geometric mean: " + ("met." if ratio <= 2 else "**not met**.") in md
    again = render.render_markdown(json.loads(next(tmp_path.glob("*.json")).read_text()))
    assert again == render.render_markdown(results)  # JSON round trip


@needs_torch
def test_cpu_backward_run_fails_a_wrong_gradient(tmp_path, tiny_backward, monkeypatch):
    real = gpuconv.grad.conv2d_weight
    monkeypatch.setattr(gpuconv.grad, "conv2d_weight", lambda *a, **k: real(*a, **k) * 1.01)
    code, results, md = _run(tmp_path, "--backward", "--layers", "tiny conv")
    assert code == 1
    data, filt = results["rows"]
    assert data["status"] == "ok" and filt["status"] == "wrong" and "median_ms" not in filt["ours"]
    assert "**WRONG**" in md


TINY_ND_BACKWARD = [dataclasses.replace(c, direction=d) for c in TINY_ND if c.dtype == "float32"
                    for d in (("backward_data", "backward_filter") if c.is_conv else ("backward",))]


@needs_torch
def test_cpu_backward_run_nd_rows(tmp_path, tiny, monkeypatch):
    """1-D and 3-D gradient rows (issue 18): ``conv1d_input`` / ``conv1d_weight`` / ``conv3d_...`` and
    ``max_pool3d_input`` against PyTorch autograd's kernels (``torch.nn.grad.conv1d_input`` ... with the
    case's stride, padding, dilation and groups; ``max_pool3d_with_indices_backward``), checked, then timed."""
    monkeypatch.setattr(bench_cli, "build_backward", lambda cpu=False: list(TINY_ND_BACKWARD))
    code, results, md = _run(tmp_path, "--backward")
    assert code == 0 and results["settings"]["suite"] == "backward"
    rows = results["rows"]
    assert [(r["layer"], r["op"], r["direction"]) for r in rows] == [(c.name, c.op, c.direction)
                                                                     for c in TINY_ND_BACKWARD]
    assert len(rows) == 7  # two conv1d and a conv3d layer (data, filter), a max_pool3d (input)
    for r, c in zip(rows, TINY_ND_BACKWARD):
        assert r["status"] == "ok" and r["check"]["ok"] and r["check"]["magnitude_max"] > 0, r
        assert r["reference"].startswith("PyTorch autograd") and r["peer"]["status"] == "ok"
        assert r["ours"]["n"] == 2 == r["peer"]["n"] and r["speed_vs_peer"] > 0
        assert r["shape"] == c.shape_label and r["case"]["direction"] == c.direction
    assert rows[0]["case"]["dilation"] == 4 and rows[0]["kernel"].startswith("conv1d as conv2d of height 1")
    assert "| tiny conv3d | 2x3x5x9x7, 4x3x3x3/1x2x1 p1 | float32 | filter |" in md
    assert "| tiny max-pool3d |" in md and f"over {len(rows)} rows" in md


@needs_torch
def test_nd_gradients_match_torch_at_their_sizes():
    """``backward.ours_gradient`` and ``torch_gradient`` agree on each 1-D / 3-D layer's gradient shapes and
    values (tiny batch and sizes of the real layers' geometry: stride, padding, dilation, groups, windows)."""
    import torch
    for c in suite.build_backward(cpu=True):
        if c.dims == 2:
            continue
        small = dataclasses.replace(c, N=1, C=min(c.C, 8) if c.groups == 1 else 8, K=min(c.K, 8),
                                    groups=1 if c.groups == 1 else 8,
                                    H=tuple(min(h, 12) for h in c.size) if c.dims == 3 else min(c.H, 64))
        rng = np.random.default_rng(0)
        x = rng.standard_normal(small.input_shape).astype(np.float32)
        w = rng.standard_normal(small.weight_shape).astype(np.float32) if small.is_conv else None
        g = rng.standard_normal(small.output_shape).astype(np.float32)
        tx, tg = torch.from_numpy(x), torch.from_numpy(g)
        tw = None if w is None else torch.from_numpy(w)
        ours = backward.ours_gradient(small, x, w, g, backward.ours_indices(small, x))
        theirs = backward.torch_gradient(torch, small, tx, tw, tg, backward.torch_indices(torch, small, tx))
        np.testing.assert_allclose(ours, theirs.numpy(), rtol=2e-4, atol=2e-4, err_msg=small.title)


def test_cpu_backward_run_without_torch(tmp_path, tiny_backward, monkeypatch):
    monkeypatch.setattr(bench_cli, "import_torch", lambda kind: (None, "no torch"))
    code, results, md = _run(tmp_path, "--backward")
    assert code == 0
    assert all(r["status"] == "unchecked" and r["peer"] is None for r in results["rows"])
    assert "backward: nothing timed against PyTorch." in md


def _with_backward_rows(results):
    """``results`` with two gradient rows appended (a GPU run's, from fake contenders)."""
    case = suite.Case("ResNet-50 3x3", "conv2d", 32, 64, 56, 64, 3, 1, 1)
    rows = []
    for direction, ms in (("backward_data", 4.0), ("backward_filter", 1.0)):
        c = runner.Contender("auto", "ours", None, status="ok", kernel="gpuconv::conv2d_bwd<float>",
                             check=dict(ok=True, max_abs_err=1e-6), times=[ms * 1e-3])
        p = runner.Contender("cuDNN", "peer", None, status="ok", check=dict(ok=True, max_abs_err=0.0), times=[1e-3])
        rows += runner.case_rows(dataclasses.replace(case, direction=direction), [c, p], results["roofline"],
                                 "PyTorch autograd's kernels, float32, TF32 off")
    return dict(results, rows=results["rows"] + rows)


def test_render_backward_rows_apart():
    """Gradient rows: a table of their own after the forward one, which is unchanged; the forward summary
    counts forward rows only; a ``backward:`` line (no CPU bar on a GPU)."""
    plain = _gpu_like_results()
    both = _with_backward_rows(plain)
    md_plain, md_both = render.render_markdown(plain), render.render_markdown(both)
    forward_table = "\n".join(render.render_table(plain))
    assert forward_table in md_both and forward_table in md_plain
    assert "\n".join(render.render_table(both)) == forward_table
    back = render.render_table(both, backward=True)
    assert len(back) == 4 and "| gradient |" in back[0] and "| data |" in back[2] and "| filter |" in back[3]
    assert md_both.index(forward_table) < md_both.index("Gradients (backward):")
    summary_plain = render.render_summary(plain)
    assert summary_plain[0] in md_both  # forward geometric means unchanged
    assert "backward: geometric mean of time ours / cuDNN = 2.00 over 2 rows" in md_both
    assert "data 4.00 over 1, filter 1.00 over 1" in md_both and "Bar of the NumPy" not in md_both
    assert "Gradients (backward)" not in md_plain and "backward:" not in md_plain
    assert render._compact_kernels("a + a + b") == "a ×2 + b" and render._compact_kernels("a") == "a"


def test_old_results_files_render_as_before(tmp_path):
    """Forward-suite files (the committed ones written before gradients have no ``direction`` anywhere):
    forward only, no gradient section; the round trip through write_results keeps the rendering."""
    from pathlib import Path
    files = sorted((Path(__file__).parent.parent / "bench" / "results").glob("*.json"))
    forward_files = [f for f in files if json.loads(f.read_text())["settings"].get("suite") != "backward"]
    assert forward_files
    for f in forward_files:
        old = json.loads(f.read_text())
        assert not any("direction" in r for r in old["rows"])
        md = render.render_markdown(old)
        assert "Gradients" not in md and "backward" not in md
        assert md.count("\n| ") == len(old["rows"]) + 1  # header + one line per row (separator starts "|-")
        paths = result_files.rerender(f, tmp_path / f.stem, plot=False)
        assert render.render_markdown(json.loads(paths["json"].read_text())) == md


def test_committed_backward_results_render_as_filed(tmp_path):
    """A committed backward-suite file re-renders to its committed Markdown, gradients section included."""
    from pathlib import Path
    results_dir = Path(__file__).parent.parent / "bench" / "results"
    for f in sorted(results_dir.glob("*-backward.json")):
        data = json.loads(f.read_text())
        md = render.render_markdown(data)
        assert "Gradients (backward):" in md and all(r.get("direction") for r in data["rows"])
        assert f.with_suffix(".md").read_text().startswith(md.rstrip("\n"))  # the filed one adds its plot


@pytest.mark.emulated
@needs_torch
def test_gpu_backward_rows_on_the_emulator():
    """Gradient rows with our CUDA kernels (run by the emulator): one 'auto' row per gradient, checked
    against PyTorch, its kernel recorded."""
    from gpuconv._backend import CudaBackend, use_backend
    from tests.runners import emulated_runtime

    class EmulatedPlatform(platforms.CpuPlatform):
        warmup = 1
        settle_s = 0.0

        def session(self):
            return use_backend(CudaBackend(emulated_runtime()))

        def roofline(self):
            return dict(peak_flops=None, peak_source="n/a", bandwidth=None, bandwidth_source="n/a")

    cases = [c for c in TINY_BACKWARD if c.name != "tiny dw"]
    results = runner.run_bench(EmulatedPlatform(torch), cases, ["auto"], 1, suite="backward")
    rows = results["rows"]
    assert [r["direction"] for r in rows] == [c.direction for c in cases]
    for r in rows:
        assert r["status"] == "ok" and r["check"]["ok"] and r["kernel"].startswith("gpuconv::"), r
        assert r["speed_vs_peer"] > 0
    assert "backward: geometric mean" in render.render_markdown(results)


@pytest.mark.emulated
def test_gpu_platform_backward_with_a_fake_cupy(monkeypatch):
    """GpuPlatform with gradient rows through the fake CuPy: without torch the reference is gpuconv's NumPy
    path on host copies (with its magnitude), every timed call flushed, spun and event-timed."""
    from gpuconv._backend import CudaBackend, use_backend
    from tests.runners import emulated_runtime

    fake = FakeCupy()
    monkeypatch.setitem(sys.modules, "cupy", fake)
    plat = platforms.GpuPlatform(None)
    cases = [TINY_BACKWARD[0], TINY_BACKWARD[1], TINY_BACKWARD[3]]
    with use_backend(CudaBackend(emulated_runtime())):
        results = runner.run_bench(plat, cases, plat.conv_algos(), 2, suite="backward", peer_missing="no torch")
    rows = results["rows"]
    assert [(r["layer"], r["direction"], r["algo"]) for r in rows] == [(c.name, c.direction, "auto") for c in cases]
    for r in rows:
        assert r["status"] == "ok" and r["reference"].startswith("gpuconv's NumPy path") and r["peer"] is None
        assert r["check"]["magnitude_max"] > 0 and r["ours"]["n"] == 2 and r["kernel"].startswith("gpuconv::")
    timed = "".join("F" if e == "flush" else "S" if e == "spin" else "E" for e in fake.log)
    assert "FSEE" * (2 * len(rows)) in timed


def test_cli_backward_options(capsys):
    assert cli(["bench", "--device", "cpu", "--backward", "--list", "--layers", "conv5,global"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [ln.split("  ")[0] for ln in out] == ["conv5 3x3 backward data", "conv5 3x3 backward filter",
                                                  "global avg-pool backward input"]
    for other in ("--quick", "--targets"):
        with pytest.raises(SystemExit):
            cli(["bench", "--backward", other])
