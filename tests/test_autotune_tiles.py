"""The autotuner's GEMM variants (issue 16): ``algo='auto'`` measures ``igemm`` once per admissible tile
and with split-K on / off (``igemm/<tile>``, ``igemm/<tile>/split``), ``gemm1x1`` once per tile
(``ops.VARIANTS``, ``gemm.TileVariants``, ``select.tuning_candidates``); the operation table resolves a
variant name to the algorithm pinned to that tile; the record names the tile that ran (its name
expression); cache entries naming a plain algorithm (written before tiles were measured) still work.

Kernels run on the CPU emulator; the fake timer of tests/test_autotune.py's kind gives each kernel name
expression a time, so the winning tile is known in advance and differs from the rule's.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import gpuconv
from gpuconv._backend import CudaBackend, use_backend
from gpuconv._cuda import autotune, conv_gemm1x1, conv_igemm, gemm, ops, select, settings
from gpuconv._cuda.gemm import LARGE_TILE, SMALL_TILE, WIDE_TILE
from gpuconv._geometry import conv_geometry
from tests.reference import conv2d_ref
from tests.runners import SpyRuntime, emulated_runtime
from tests.tolerance import assert_close

F32 = np.dtype(np.float32)


class TileTimedRuntime(SpyRuntime):
    """The emulator with a fake timer: a timed call costs ``fake_ms`` of the first kernel it launched (its
    name expression), ``default_ms`` for any other kernel."""

    can_time = True

    def __init__(self, fake_ms, default_ms=5.0):
        super().__init__(emulated_runtime())
        self.fake_ms, self.default_ms = fake_ms, default_ms
        self.timed: list[str] = []

    def device_key(self):
        return "emulated-device"

    def time_ms(self, fn, repeats):
        before = len(self.launches)
        fn()
        name = self.launches[before].name
        self.timed.append(name)
        return self.fake_ms.get(name, self.default_ms)


@pytest.fixture(autouse=True)
def fresh_autotuner(monkeypatch):
    monkeypatch.delenv("GPUCONV_AUTOTUNE", raising=False)
    monkeypatch.delenv("GPUCONV_AUTOTUNE_CACHE", raising=False)
    monkeypatch.setattr(settings, "_enabled", None)
    monkeypatch.setattr(settings, "_cache_file", None)
    autotune.clear_autotune_cache()
    yield
    autotune.clear_autotune_cache()


def _data(xs, ws, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(xs).astype(np.float32), (rng.standard_normal(ws) / 4).astype(np.float32)


def _check(y, x, w, pad):
    p = (pad,) * 4
    ref = conv2d_ref(x, w, None, stride=(1, 1), pad=p, dilation=(1, 1), groups=1)
    mag = conv2d_ref(np.abs(x), np.abs(w), None, stride=(1, 1), pad=p, dilation=(1, 1), groups=1)
    assert_close(y, ref, mag, np.float32)


def _split_name(tile):
    return gemm.gemm_kernel_name(conv_igemm.SPLIT_KERNEL, F32, tile)


# ------------------------------------------------------------------------------------------------
# the variants and the table (no kernel runs)

def test_variants_per_geometry_and_dtype():
    # Kg = 96 > 64: every tile; Cg*R*S = 288 (18 slices), few blocks: split-K applies to each tile.
    g = conv_geometry((1, 32, 8, 8), (96, 32, 3, 3), None, 1, 1)
    assert conv_igemm.VARIANTS.names(g, F32) == ("large", "large/split", "wide", "wide/split", "small",
                                                 "small/split")
    # float64 has its small tile only; Kg <= 64 leaves the large tile out (half of its rows would be 0).
    assert conv_igemm.VARIANTS.names(g, np.float64) == ("small", "small/split")
    g64 = conv_geometry((1, 32, 8, 8), (64, 32, 3, 3), None, 1, 1)
    assert conv_igemm.VARIANTS.names(g64, np.float16) == ("wide", "wide/split", "small", "small/split")
    # No split where the rule does not split (enough blocks, or a short reduction); gemm1x1 has no split-K.
    big = conv_geometry((8, 64, 64, 64), (128, 64, 1, 1), None, 1, 0)
    assert conv_igemm.VARIANTS.names(big, F32) == ("large", "wide", "small")
    assert conv_gemm1x1.VARIANTS.names(big, F32) == ("large", "wide", "small")
    # The rule's own choice is always one of them.
    for geom in (g, g64, big):
        tile = gemm.gemm_tile_for(geom, F32)
        rule = tile.name + ("/split" if conv_igemm.splitk_for(geom, tile) > 1 else "")
        assert rule in conv_igemm.VARIANTS.names(geom, F32)


def test_tuning_candidates_expand_the_gemm_algorithms():
    g = conv_geometry((1, 32, 8, 8), (96, 32, 3, 3), None, 1, 1)
    names = select.tuning_candidates(g, F32)
    plain = select.candidates(g, F32)
    assert "igemm" in plain and "igemm" not in names and "gemm1x1" not in plain
    assert [n for n in names if "/" not in n] == [n for n in plain if n != "igemm"]
    assert [n for n in names if n.startswith("igemm/")] == [f"igemm/{v}" for v in conv_igemm.VARIANTS.names(g, F32)]
    g1 = conv_geometry((2, 8, 9, 7), (12, 8, 1, 1), None, 1, 0)
    assert [n for n in select.tuning_candidates(g1, F32) if "/" in n] == [
        "igemm/wide", "igemm/small", "gemm1x1/wide", "gemm1x1/small"]


def test_the_table_resolves_variant_names_without_listing_them():
    table = ops.operation("conv2d").algorithms
    assert list(table) == ["direct", "tiled", "depthwise", "igemm", "gemm1x1", "igemm_tc"]
    assert "igemm/small" not in table  # not an algo= name
    a = table["igemm/wide/split"]
    assert a.name == "igemm/wide/split" and a.source == conv_igemm.SOURCE
    assert a.launch.keywords == {"tile": WIDE_TILE, "splits": None}
    assert table["igemm/small"].launch.keywords == {"tile": SMALL_TILE, "splits": 1}
    assert table["gemm1x1/large"].launch.keywords == {"tile": LARGE_TILE}
    for bad in ("direct/small", "igemm/huge", "igemm/small/splat", "gemm1x1/small/split", "nope/small", "igemm/"):
        with pytest.raises(KeyError):
            table[bad]
    # A variant declines what its algorithm declines, and calls it does not apply to.
    g = conv_geometry((1, 4, 6, 6), (8, 4, 3, 3), None, 1, 1)
    assert select.decline_reason("igemm/wide", g, F32) is None
    assert "does not apply" in select.decline_reason("igemm/wide", g, np.float64)
    assert "does not apply" in select.decline_reason("igemm/large", g, F32)  # Kg = 8
    assert "does not apply" in select.decline_reason("igemm/small/split", g, F32)  # 36: no split
    assert "1x1" in select.decline_reason("gemm1x1/small", g, F32)


# ------------------------------------------------------------------------------------------------
# measuring (emulated kernels)

@pytest.mark.emulated
def test_measures_each_tile_and_runs_the_fastest():
    """Kg = 8, M = 2*9*10 = 180: the rule takes the small tile (few blocks); the fake timer makes the
    wide tile fastest, and 'auto' then runs the wide tile (its name expression in the record)."""
    x, w = _data((2, 5, 9, 10), (8, 5, 3, 3))
    g = conv_geometry(x.shape, w.shape, None, 1, 1)
    assert gemm.gemm_tile_for(g, F32) is SMALL_TILE
    wide = conv_igemm.igemm_name(F32, WIDE_TILE)
    rt = TileTimedRuntime({wide: 1.0})
    with use_backend(CudaBackend(rt)):
        y = gpuconv.conv2d(x, w, padding=1)
        assert gpuconv.last_kernel().kernel == wide
        measured = len(rt.timed)
        assert measured == len(select.tuning_candidates(g, F32))
        assert conv_igemm.igemm_name(F32, SMALL_TILE) in rt.timed  # every tile was measured
        y2 = gpuconv.conv2d(x, w, padding=1)  # looked up, not measured again
        assert len(rt.timed) == measured and gpuconv.last_kernel().kernel == wide
    _check(y, x, w, 1)
    np.testing.assert_array_equal(y, y2)
    (choice,) = gpuconv.autotune_choices()
    assert choice["algo"] == "igemm/wide" and choice["how"] == "measured"
    assert choice["times_ms"]["igemm/wide"] == 1.0 and choice["times_ms"]["igemm/small"] == 5.0


@pytest.mark.emulated
@pytest.mark.parametrize("split", [True, False])
def test_split_on_or_off_is_measured(split):
    """Cg*R*S = 288 (18 slices), 2 small tiles: the rule splits in 2; the timer decides split or not."""
    x, w = _data((1, 32, 6, 7), (24, 32, 3, 3), seed=1)
    g = conv_geometry(x.shape, w.shape, None, 1, 1)
    assert conv_igemm.splitk_for(g, SMALL_TILE) == 2
    fast = _split_name(SMALL_TILE) if split else conv_igemm.igemm_name(F32, SMALL_TILE)
    rt = TileTimedRuntime({fast: 1.0})
    with use_backend(CudaBackend(rt)):
        y = gpuconv.conv2d(x, w, padding=1)
        kid = gpuconv.last_kernel().kernel
    if split:
        assert kid == f"{fast} splitK=2 + {conv_igemm.reduce_name(F32)}"
    else:
        assert kid == fast
    assert gpuconv.autotune_choices()[0]["algo"] == ("igemm/small/split" if split else "igemm/small")
    _check(y, x, w, 1)


@pytest.mark.emulated
def test_pointwise_kernel_tiles_are_measured():
    x, w = _data((2, 8, 9, 7), (12, 8, 1, 1), seed=2)
    wide = conv_gemm1x1.gemm1x1_name(F32, WIDE_TILE)
    rt = TileTimedRuntime({wide: 0.5})
    with use_backend(CudaBackend(rt)):
        y = gpuconv.conv2d(x, w)
        assert gpuconv.last_kernel().kernel == wide
    assert conv_gemm1x1.gemm1x1_name(F32, SMALL_TILE) in rt.timed
    assert gpuconv.autotune_choices()[0]["algo"] == "gemm1x1/wide"
    _check(y, x, w, 0)


@pytest.mark.emulated
def test_cache_file_keeps_a_variant_and_reads_old_plain_entries(tmp_path):
    x, w = _data((2, 5, 9, 10), (8, 5, 3, 3))
    g = conv_geometry(x.shape, w.shape, None, 1, 1)
    key = autotune.shape_key("emulated-device", g, F32)
    path = tmp_path / "tune.json"
    gpuconv.set_autotune(cache_file=path)
    wide = conv_igemm.igemm_name(F32, WIDE_TILE)
    with use_backend(CudaBackend(TileTimedRuntime({wide: 1.0}))):
        gpuconv.conv2d(x, w, padding=1)
    assert json.loads(path.read_text())["choices"][key]["algo"] == "igemm/wide"

    autotune.clear_autotune_cache()  # a new process: the variant comes from the file, nothing is measured
    rt = TileTimedRuntime({})
    with use_backend(CudaBackend(rt)):
        y = gpuconv.conv2d(x, w, padding=1)
    assert rt.timed == [] and gpuconv.last_kernel().kernel == wide
    _check(y, x, w, 1)

    # An entry of an older version names the algorithm only: it runs with the rule's tile.
    path.write_text(json.dumps({"format": autotune.FORMAT, "choices": {key: {"algo": "igemm", "times_ms": {}}}}))
    autotune.clear_autotune_cache()
    rt = TileTimedRuntime({})
    with use_backend(CudaBackend(rt)):
        gpuconv.conv2d(x, w, padding=1)
    assert rt.timed == [] and gpuconv.last_kernel().kernel == conv_igemm.igemm_name(F32, SMALL_TILE)

    # An entry naming a variant this version lacks is skipped: the shape is measured again.
    path.write_text(json.dumps({"format": autotune.FORMAT,
                                "choices": {key: {"algo": "igemm/huge", "times_ms": {}}}}))
    autotune.clear_autotune_cache()
    rt = TileTimedRuntime({wide: 1.0})
    with use_backend(CudaBackend(rt)):
        gpuconv.conv2d(x, w, padding=1)
    assert len(rt.timed) == len(select.tuning_candidates(g, F32))
    assert gpuconv.last_kernel().kernel == wide
