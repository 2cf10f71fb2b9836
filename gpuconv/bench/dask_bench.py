"""``python -m gpuconv bench --dask``: ``gpuconv.dask`` on the CPU (NumPy chunks), three measurements.

* **overhead**: one image through ``conv2d`` (3x3, padding 1, ReLU) as a single ``gpuconv.conv2d`` call and as
  ``gpuconv.dask.conv2d`` on chunks, computed with dask's threaded scheduler (as many threads as cores) and
  with the synchronous one; the ratio chunked / single is what the halos, the window copies and the
  scheduling cost (both sides use gpuconv's own thread pool inside each call).
* **scaling**: the same chunked graph on a ``distributed.LocalCluster`` of 1 and of 2 worker processes (one
  thread each, ``GPUCONV_NUMPY_THREADS=1`` so that a worker uses one core), the input persisted on the
  workers first and the output summed there; the speed-up from 1 to 2 workers.
* **large image**: a float32 image larger than the workers' memory (by default 1 x 4 x 16384 x 16384, 4 GiB,
  on 2 workers of 1.5 GiB each, spilling to disk and pausing off), generated chunk by chunk on the workers,
  through conv -> ReLU -> 2x2 max pool (``map_layers``, one halo exchange) and summed chunk by chunk;
  records the wall time, every worker's peak resident memory (``VmHWM``), whether any worker was
  restarted (its process id changed), and checks a corner of the output against the single call.

Results: ``<out>/dask-<cpu>.md`` (device, date, commit, command, figures; the raw record as JSON at its end,
not as a ``.json`` file, which in bench/results would be read as a suite results file).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .environment import cpu_name, git_state, log, slugify


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up (allocations, thread pools, imports on the workers)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _case(size: int, channels: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1, channels, size, size), dtype=np.float32)
    w = rng.standard_normal((channels, channels, 3, 3), dtype=np.float32) / (3 * channels ** 0.5)
    b = rng.standard_normal(channels, dtype=np.float32)
    return x, w, b


def overhead(size: int = 2048, channels: int = 8, chunk: int = 512, repeats: int = 5) -> dict:
    import dask.array as da

    import gpuconv
    import gpuconv.dask as gd
    x, w, b = _case(size, channels)
    y = gd.conv2d(da.from_array(x, chunks=(1, channels, chunk, chunk)), w, b, padding=1, activation="relu")
    single = gpuconv.conv2d(x, w, b, padding=1, activation="relu")
    err = float(np.abs(y.compute() - single).max())
    t_single = _median_time(lambda: gpuconv.conv2d(x, w, b, padding=1, activation="relu"), repeats)
    t_threads = _median_time(lambda: y.compute(scheduler="threads"), repeats)
    t_sync = _median_time(lambda: y.compute(scheduler="sync"), repeats)
    mpix = size * size / 1e6
    return dict(shape=list(x.shape), weight=list(w.shape), chunk=chunk, chunks=len(y.chunks[2]) * len(y.chunks[3]),
                repeats=repeats, max_abs_diff=err, single_s=t_single, threads_s=t_threads, sync_s=t_sync,
                ratio_threads=t_threads / t_single, ratio_sync=t_sync / t_single,
                single_mpix_s=mpix / t_single, threads_mpix_s=mpix / t_threads)


def _cluster(workers: int, memory_limit, env: dict):
    from distributed import Client, LocalCluster
    os.environ.update(env)  # worker processes inherit the environment they are started with
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                           memory_limit=memory_limit)
    return cluster, Client(cluster)


def scaling(size: int = 2048, channels: int = 8, chunk: int = 512, repeats: int = 5, workers=(1, 2)) -> dict:
    import dask.array as da
    from distributed import wait

    import gpuconv.dask as gd
    _, w, b = _case(8, channels)
    rows, old = {}, os.environ.get("GPUCONV_NUMPY_THREADS")
    for n in workers:
        cluster, client = _cluster(n, "4GiB", {"GPUCONV_NUMPY_THREADS": "1"})
        try:
            x = da.random.default_rng(0).standard_normal((1, channels, size, size), dtype=np.float32,
                                                         chunks=(1, channels, chunk, chunk)).persist()
            wait(x)
            total = gd.conv2d(x, w, b, padding=1, activation="relu").sum()
            rows[n] = _median_time(lambda: client.compute(total).result(), repeats)
        finally:
            client.close()
            cluster.close()
    if old is None:
        os.environ.pop("GPUCONV_NUMPY_THREADS", None)
    else:
        os.environ["GPUCONV_NUMPY_THREADS"] = old
    mpix = size * size / 1e6
    return dict(shape=[1, channels, size, size], chunk=chunk, repeats=repeats,
                seconds={str(n): t for n, t in rows.items()}, mpix_s={str(n): mpix / t for n, t in rows.items()},
                speedup=rows[workers[0]] / rows[workers[-1]] if len(rows) > 1 else None)


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _peak_rss_bytes() -> int:
    """This process's peak resident memory: ``VmHWM`` of /proc/self/status, which belongs to the process
    image (``getrusage``'s ``ru_maxrss`` would also count the parent's peak before the worker was spawned:
    Linux carries it across fork and exec)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # elsewhere: KiB on Linux, bytes on macOS


def large_image(size=16384, channels: int = 4, chunk=(512, 2048), workers: int = 2,
                memory_limit: str = "1GiB", workspace_mb: int = 64, bands: int | None = 4,
                check: int = 100) -> dict:
    """The bounded-memory run (see the module docstring); returns its record. Spilling to disk is off, so
    the image cannot go to disk instead of through the workers' memory, and pausing is off, so a worker
    over its limit is killed (and seen as restarted) instead of waiting forever for memory that only its
    own tasks would free; each worker keeps at most ``workspace_mb`` of NumPy-path workspace per thread
    (``GPUCONV_NUMPY_WORKSPACE_MB``). What a worker holds beyond its running task is input blocks waiting
    for the neighbours that read their halo, in the order the scheduler runs the chunks: as one graph
    (``bands=None``) dask's ordering keeps about a fifth of the image's input blocks at some point (measured
    with ``dask.order`` on this graph: 52 of 256), so the peak grows with the image; computed in bands of
    ``bands`` rows of output chunks, one after the other (each band recomputes the one row of input chunks
    its halo shares with the previous band), the peak is set by a band's width, not by the image."""
    import dask
    import dask.array as da
    import distributed  # noqa: F401  (its configuration defaults, before they are changed below)
    from dask.utils import parse_bytes

    import gpuconv
    import gpuconv.dask as gd
    _, w, b = _case(8, channels)

    def fn(a):
        return gpuconv.max_pool2d(gpuconv.conv2d(a, w, b, activation="relu"), 2, 2)

    field = gpuconv.receptive_field([dict(kernel_size=3), dict(kernel_size=2, stride=2)])
    (H, W), (ch, cw) = (_pair(size), _pair(chunk))
    x = da.random.default_rng(1).standard_normal((1, channels, H, W), dtype=np.float32, chunks=(1, channels, ch, cw))
    y = gd.map_layers(x, fn, field, padding=1)
    old = os.environ.get("GPUCONV_NUMPY_WORKSPACE_MB")
    with dask.config.set({"distributed.worker.memory.target": False, "distributed.worker.memory.spill": False,
                          "distributed.worker.memory.pause": False}):
        cluster, client = _cluster(workers, memory_limit, {"GPUCONV_NUMPY_WORKSPACE_MB": str(workspace_mb)})
    if old is None:
        os.environ.pop("GPUCONV_NUMPY_WORKSPACE_MB")
    else:
        os.environ["GPUCONV_NUMPY_WORKSPACE_MB"] = old
    try:
        spill_config = client.run(lambda: dask.config.get("distributed.worker.memory.spill"))
        pids = client.run(os.getpid)
        t = time.perf_counter()
        if bands is None:  # one graph: dask's order decides how many input blocks wait for neighbours
            total = float(client.compute(y.sum(dtype=np.float64)).result())
        else:  # bands of `bands` rows of output chunks, one after the other: memory set by a band, not the image
            ends = np.cumsum((0,) + y.chunks[2])[::bands].tolist() + [y.shape[2]]
            total = sum(float(client.compute(y[:, :, a:b].sum(dtype=np.float64)).result())
                        for a, b in zip(ends[:-1], ends[1:]) if b > a)
        seconds = time.perf_counter() - t
        peaks = client.run(_peak_rss_bytes)
        pids_after = client.run(os.getpid)
        corner = client.compute(y[:, :, :check, :check]).result()
        x_corner = client.compute(x[:, :, :2 * check + 1, :2 * check + 1]).result()
    finally:
        client.close()
        cluster.close()
    ref = fn(np.pad(x_corner, ((0, 0), (0, 0), (1, 0), (1, 0))))[:, :, :check, :check]
    return dict(shape=list(x.shape), image_bytes=int(x.nbytes), chunk=[ch, cw], workers=workers, bands=bands,
                memory_limit_bytes=int(parse_bytes(memory_limit)), workspace_mb=workspace_mb,
                spill_to_disk=any(spill_config.values()), seconds=seconds, sum=total,
                mpix_s=H * W / 1e6 / seconds,
                peak_rss_bytes=sorted(peaks.values()), restarted=sorted(pids.values()) != sorted(pids_after.values()),
                corner_max_abs_diff=float(np.abs(corner - ref).max()), finite=bool(np.isfinite(total)))


def render(res: dict) -> str:
    o, s = res.get("overhead"), res.get("scaling")
    lines = [f"# gpuconv.dask on the CPU ({res['device']})", "",
             f"{res['date']}, commit {res['commit']}{' (dirty)' if res.get('dirty') else ''}, "
             f"`{res['command']}`. The machine's 1-minute load average: {res['load_before']:.1f} before, "
             f"{res['load_after']:.1f} after (above the core count, other processes shared the cores).", ""]
    if o:
        lines += ["## Overhead: chunked against one call", "",
                  f"conv2d {o['shape']} * {o['weight']} (3x3, padding 1, bias, ReLU), float32, chunks of "
                  f"{o['chunk']}x{o['chunk']} ({o['chunks']} chunks); median of {o['repeats']}.", "",
                  "| path | seconds | Mpixel/s | ratio to one call |", "|---|---:|---:|---:|",
                  f"| gpuconv.conv2d, one call | {o['single_s']:.3f} | {o['single_mpix_s']:.1f} | 1.00 |",
                  f"| gpuconv.dask.conv2d, threaded scheduler | {o['threads_s']:.3f} | {o['threads_mpix_s']:.1f} | "
                  f"{o['ratio_threads']:.2f} |",
                  f"| gpuconv.dask.conv2d, synchronous scheduler | {o['sync_s']:.3f} | | {o['ratio_sync']:.2f} |",
                  "", f"Largest difference from the single call: {o['max_abs_diff']:.3g}.", ""]
    if s:
        lines += ["## Scaling over worker processes", "",
                  f"The same conv2d on {s['shape']} (chunks {s['chunk']}), input persisted on a LocalCluster, "
                  f"output summed; one thread per worker, GPUCONV_NUMPY_THREADS=1; median of {s['repeats']}.", "",
                  "| workers | seconds | Mpixel/s |", "|---:|---:|---:|"]
        lines += [f"| {n} | {t:.3f} | {s['mpix_s'][n]:.1f} |" for n, t in s["seconds"].items()]
        lines += ["", f"Speed-up from 1 to 2 workers: {s['speedup']:.2f}x.", ""]
    for big in (res.get("large_image"), res.get("large_image_one_graph")):
        if not big:
            continue
        gib = 2 ** 30
        how = (f"in bands of {big['bands']} rows of output chunks, one band after the other" if big.get("bands")
               else "as one graph (dask orders the chunks)")
        lines += [f"## An image larger than the workers' memory, {how}", "",
                  f"{big['shape']} float32 ({big['image_bytes'] / gib:.1f} GiB), generated on the workers in "
                  f"chunks of {big['chunk'][0]}x{big['chunk'][1]}, conv 3x3 (padding 1) -> ReLU -> 2x2 max pool "
                  f"(map_layers) -> sum, on {big['workers']} worker processes with a memory limit of "
                  f"{big['memory_limit_bytes'] / gib:.2f} GiB each (spilling to disk and pausing off, "
                  f"GPUCONV_NUMPY_WORKSPACE_MB={big['workspace_mb']}).", "",
                  f"* wall time {big['seconds']:.1f} s ({big['mpix_s']:.1f} Mpixel/s of input)",
                  "* peak resident memory per worker: " + ", ".join(f"{p / gib:.2f} GiB" for p in big["peak_rss_bytes"]),
                  f"* workers restarted: {'yes' if big['restarted'] else 'none'}",
                  f"* output corner against the single call: largest difference {big['corner_max_abs_diff']:.3g}", ""]
    return "\n".join(lines)


def main(args) -> int:
    try:
        import dask.array  # noqa: F401
        import distributed  # noqa: F401
    except ImportError as exc:
        log(f"bench --dask: needs dask[array] and distributed (pip install 'gpuconv[dask]'): {exc}")
        return 2
    quick = bool(getattr(args, "quick", False))
    res = dict(device=f"{cpu_name()}, {os.cpu_count()} cores", date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
               command="python -m gpuconv " + " ".join(sys.argv[1:]), load_before=os.getloadavg()[0], **git_state())
    log("bench --dask: overhead")
    res["overhead"] = overhead(1024 if quick else 2048, repeats=3 if quick else 5)
    log("bench --dask: scaling over 1 and 2 worker processes")
    res["scaling"] = scaling(1024 if quick else 2048, repeats=3 if quick else 5)
    if not quick:
        log("bench --dask: an image larger than the workers' memory, in bands of 4 rows of chunks")
        res["large_image"] = large_image()
        log("bench --dask: the same as one graph, workers of 1.5 GiB")
        res["large_image_one_graph"] = large_image(memory_limit="1.5GiB", bands=None)
    res["load_after"] = os.getloadavg()[0]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / ("dask-" + slugify(f"cpu {cpu_name()} {os.cpu_count()}c") + ("-quick" if quick else ""))
    text = render(res)
    # One Markdown file with the raw record at its end: the *.json files in bench/results are the suite's
    # (its renderer and bench/update_readme.py read every one of them), whose schema this is not.
    stem.with_suffix(".md").write_text(text + "\n## Raw figures\n\n```json\n" + json.dumps(res, indent=1) + "\n```\n")
    print(text)
    log(f"wrote {stem}.md")
    return 0
