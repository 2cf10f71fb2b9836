"""``algo='auto'`` on the CUDA path: the autotuner (gpuconv/_cuda/autotune.py) measures the algorithms that
accept a call once per shape, dtype and device, keeps the fastest, and remembers it in memory and in an
optional JSON file; without a timer (the CPU emulator) or with measuring off, the heuristic decides.

The kernels run on the CPU emulator; a wrapper runtime supplies a fake timer whose figures per algorithm
the test sets, so the choice is known in advance and differs from the heuristic's.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import gpuconv
from gpuconv._backend import CudaBackend, use_backend
from gpuconv._cuda import autotune, conv, select, settings
from tests.reference import conv2d_ref
from tests.runners import SpyRuntime, emulated_runtime
from tests.tolerance import assert_close

pytestmark = pytest.mark.emulated


class TimedRuntime(SpyRuntime):
    """The emulator plus a fake ``time_ms``: the time of a call is ``fake_ms[name]`` of the first kernel it
    launched, ``name`` its full name expression when ``fake_ms`` has it, else its algorithm family
    (``igemm`` for conv2d_igemm and conv2d_igemm_splitk). Counts the timed calls; ``launches`` records
    every kernel launched."""

    can_time = True

    def __init__(self, fake_ms, device="emulated-device"):
        super().__init__(emulated_runtime())
        self.fake_ms, self.device = fake_ms, device
        self.timed = 0

    def device_key(self):
        return self.device

    def time_ms(self, fn, repeats):
        assert repeats >= 1
        self.timed += 1
        before = len(self.launches)
        fn()
        name = self.launches[before].name
        if name in self.fake_ms:
            return self.fake_ms[name]
        algo = name.split("::conv2d_")[1].split("<")[0].removesuffix("_splitk")
        return self.fake_ms[algo]


@pytest.fixture(autouse=True)
def fresh_autotuner(monkeypatch):
    monkeypatch.delenv("GPUCONV_AUTOTUNE", raising=False)
    monkeypatch.delenv("GPUCONV_AUTOTUNE_CACHE", raising=False)
    monkeypatch.setattr(settings, "_enabled", None)
    monkeypatch.setattr(settings, "_cache_file", None)
    autotune.clear_autotune_cache()
    yield
    autotune.clear_autotune_cache()


def _problem(seed=0, H=18):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 3, H, H + 1)).astype(np.float32)
    w = (rng.standard_normal((4, 3, 3, 3)) / 5).astype(np.float32)
    return x, w


def _check(y, x, w, **kw):
    ref = conv2d_ref(x, w, None, stride=(1, 1), pad=(1, 1, 1, 1), dilation=(1, 1), groups=1)
    mag = conv2d_ref(np.abs(x), np.abs(w), None, stride=(1, 1), pad=(1, 1, 1, 1), dilation=(1, 1), groups=1)
    assert_close(y, ref, mag, np.float32)


def _fake_times(fastest):
    """Every registered algorithm 5 ms, ``fastest`` 1 ms."""
    return {name: (1.0 if name == fastest else 5.0) for name in conv.OP.names}


def test_measures_once_and_keeps_the_fastest():
    x, w = _problem()
    g_heuristic = select.choose_algo(gpuconv._geometry.conv_geometry(x.shape, w.shape, None, 1, 1), np.float32)
    fastest = "direct" if g_heuristic != "direct" else "tiled"  # differ from the heuristic on purpose
    rt = TimedRuntime(_fake_times(fastest))
    with use_backend(CudaBackend(rt)):
        y = gpuconv.conv2d(x, w, padding=1)
        assert gpuconv.last_kernel().kernel.startswith(f"gpuconv::conv2d_{fastest}<")
        candidates = select.tuning_candidates(gpuconv._geometry.conv_geometry(x.shape, w.shape, None, 1, 1),
                                              np.float32)
        assert rt.timed == len(candidates) >= 2
        _check(y, x, w)
        y2 = gpuconv.conv2d(x, w, padding=1, activation="relu")  # same sizes: looked up, not measured again
        assert rt.timed == len(candidates)
        assert gpuconv.last_kernel().kernel.startswith(f"gpuconv::conv2d_{fastest}<")
        np.testing.assert_allclose(y2, np.maximum(y, 0), rtol=1e-6, atol=1e-6)
    (choice,) = gpuconv.autotune_choices()
    assert choice["algo"] == fastest and choice["how"] == "measured"
    assert set(choice["times_ms"]) == set(candidates) and choice["times_ms"][fastest] == 1.0
    assert choice["key"].startswith("conv2d forward|emulated-device|float32|N2 C3 H18 W19 K4 R3 S3 g1 s1,1 p1,1,1,1 d1,1")


def test_a_new_shape_or_device_is_measured_again():
    x, w = _problem()
    x2, _ = _problem(H=11)
    rt = TimedRuntime(_fake_times("direct"))
    with use_backend(CudaBackend(rt)):
        gpuconv.conv2d(x, w, padding=1)
        first = rt.timed
        gpuconv.conv2d(x2, w, padding=1)
        assert rt.timed == 2 * first
    rt2 = TimedRuntime(_fake_times("tiled"), device="another-device")
    with use_backend(CudaBackend(rt2)):
        gpuconv.conv2d(x, w, padding=1)
        assert rt2.timed == first
        assert gpuconv.last_kernel().kernel.startswith("gpuconv::conv2d_tiled<")
    assert len(gpuconv.autotune_choices()) == 3


@pytest.mark.parametrize("how", ["set_autotune", "environment"])
def test_measuring_off_uses_the_heuristic(how, monkeypatch):
    x, w = _problem()
    if how == "set_autotune":
        gpuconv.set_autotune(False)
    else:
        monkeypatch.setenv("GPUCONV_AUTOTUNE", "0")
    rt = TimedRuntime(_fake_times("direct"))
    geom = gpuconv._geometry.conv_geometry(x.shape, w.shape, None, 1, 1)
    with use_backend(CudaBackend(rt)):
        y = gpuconv.conv2d(x, w, padding=1)
    assert rt.timed == 0
    expected = select.choose_algo(geom, np.float32)
    assert gpuconv.last_kernel().kernel.startswith(f"gpuconv::conv2d_{expected}<")
    assert [c["how"] for c in gpuconv.autotune_choices()] == ["heuristic"]
    _check(y, x, w)


def test_a_runtime_without_a_timer_uses_the_heuristic():
    """The plain emulator cannot time kernels: 'auto' is the heuristic there (and says so)."""
    x, w = _problem()
    with use_backend(CudaBackend(emulated_runtime())):
        gpuconv.conv2d(x, w, padding=1)
    (choice,) = gpuconv.autotune_choices()
    assert choice["how"] == "heuristic" and choice["times_ms"] == {}


def test_cache_file_keeps_choices_across_processes(tmp_path):
    path = tmp_path / "sub" / "autotune.json"
    gpuconv.set_autotune(cache_file=path)
    x, w = _problem()
    with use_backend(CudaBackend(TimedRuntime(_fake_times("direct")))):
        gpuconv.conv2d(x, w, padding=1)
    data = json.loads(path.read_text())
    (entry,) = data["choices"].values()
    assert entry["algo"] == "direct"

    autotune.clear_autotune_cache()  # as a new process would start
    rt = TimedRuntime(_fake_times("tiled"))  # would pick tiled if it measured
    with use_backend(CudaBackend(rt)):
        y = gpuconv.conv2d(x, w, padding=1)
    assert rt.timed == 0
    assert gpuconv.last_kernel().kernel.startswith("gpuconv::conv2d_direct<")
    assert [c["how"] for c in gpuconv.autotune_choices()] == ["cache file"]
    _check(y, x, w)


def test_cache_file_from_the_environment(tmp_path, monkeypatch):
    path = tmp_path / "env.json"
    monkeypatch.setenv("GPUCONV_AUTOTUNE_CACHE", str(path))
    x, w = _problem()
    with use_backend(CudaBackend(TimedRuntime(_fake_times("direct")))):
        gpuconv.conv2d(x, w, padding=1)
    assert path.is_file()


def test_cache_files_of_the_first_format_are_read_as_conv2d_forward(tmp_path):
    """Files written before choices were keyed by (op, direction) (``gpuconv-autotune-1``, keys without
    the operation) still count: their entries are conv2d forward's; rewriting saves format 2."""
    x, w = _problem()
    geom = gpuconv._geometry.conv_geometry(x.shape, w.shape, None, 1, 1)
    old_key = autotune.shape_key("emulated-device", geom, np.float32).split("|", 1)[1]
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"format": "gpuconv-autotune-1",
                                "choices": {old_key: {"algo": "tiled", "times_ms": {"tiled": 1.0}}}}))
    gpuconv.set_autotune(cache_file=path)
    rt = TimedRuntime(_fake_times("direct"))  # would pick direct if it measured
    with use_backend(CudaBackend(rt)):
        y = gpuconv.conv2d(x, w, padding=1)
    assert rt.timed == 0 and gpuconv.last_kernel().kernel.startswith("gpuconv::conv2d_tiled<")
    assert [(c["key"].split("|")[0], c["how"]) for c in gpuconv.autotune_choices()] == [
        ("conv2d forward", "cache file")]
    _check(y, x, w)


def test_unreadable_cache_file_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    gpuconv.set_autotune(cache_file=path)
    x, w = _problem()
    with use_backend(CudaBackend(TimedRuntime(_fake_times("direct")))):
        with pytest.raises(ValueError, match="autotune cache file .*bad.json"):
            gpuconv.conv2d(x, w, padding=1)


def test_only_algorithms_that_accept_the_call_are_measured():
    """Tiled declines a 3x3 filter dilated by 60 (shared memory): it is not a candidate."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 2, 125, 123)).astype(np.float32)
    w = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    geom = gpuconv._geometry.conv_geometry(x.shape, w.shape, None, 1, 0, 60)
    names = select.tuning_candidates(geom, np.float32)
    assert "tiled" not in names and "direct" in names
    rt = TimedRuntime(_fake_times("direct"))
    with use_backend(CudaBackend(rt)):
        gpuconv.conv2d(x, w, dilation=60)
    assert rt.timed == len(names)
    assert not any("conv2d_tiled" in launch.name for launch in rt.launches)
