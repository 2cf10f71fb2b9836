"""Bounded memory (``-m slow``): a 4 GiB float32 image (1 x 4 x 16384 x 16384) goes through conv -> ReLU -> max
pool (``gpuconv.dask.map_layers``) and is summed chunk by chunk, in bands of 4 rows of output chunks, on a
``LocalCluster`` of 2 worker processes with a memory limit of 1 GiB each (2 GiB together: the image never
fits), spilling to disk and pausing off (a worker over its limit is killed and restarted by its nanny, which
the test would see); no worker may be restarted and each worker's peak resident memory must stay below its
limit. (As one graph, dask's ordering holds about a fifth of the input blocks at once, and the peak grows
with the image: see ``large_image``'s docstring.) The run is ``gpuconv.bench.dask_bench.large_image`` (the benchmark's too),
which also checks a corner of the output against the single call on the same input."""

from __future__ import annotations

import pytest

pytest.importorskip("dask.array")
pytest.importorskip("distributed")

from gpuconv.bench.dask_bench import large_image  # noqa: E402


@pytest.mark.slow
def test_an_image_larger_than_the_workers_memory_streams_through():
    r = large_image(size=16384, channels=4, chunk=(512, 2048), workers=2, memory_limit="1GiB", bands=4)
    print(f"\n{r['shape']} float32, {r['image_bytes'] / 2**30:.1f} GiB, {r['seconds']:.1f} s, peak RSS per worker "
          + ", ".join(f"{p / 2**30:.2f} GiB" for p in r["peak_rss_bytes"]))
    assert r["image_bytes"] > r["workers"] * r["memory_limit_bytes"]
    assert not r["spill_to_disk"]
    assert not r["restarted"]
    assert len(r["peak_rss_bytes"]) == 2 and max(r["peak_rss_bytes"]) < r["memory_limit_bytes"]
    assert r["finite"] and r["corner_max_abs_diff"] == 0.0
