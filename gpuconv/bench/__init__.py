"""``python -m gpuconv bench``: every gpuconv algorithm against the library a user would pick instead.

On a GPU (CuPy usable): each conv2d algorithm of ours (``gpuconv._cuda.ops`` + ``'auto'``, read at
run time) and each pooling kernel, against PyTorch/cuDNN in float32 with TF32 off (the exact comparison)
and, in a column of its own, with TF32 on (PyTorch's default for convolutions). On the CPU: the NumPy path
against PyTorch CPU (all its threads) on a CPU-sized suite (``scale_for_cpu``), or with ``--targets`` on
the layers the NumPy path was tuned on (with a bias) against its goals (``suite.TARGETS``). Without
PyTorch, ours runs alone and the peer is reported missing (gpuconv never needs torch).

The suite (``suite.py``) also has 1-D and 3-D rows (``suite.ND_LAYERS``: ``conv1d`` / ``conv3d`` /
``max_pool3d`` against ``F.conv1d`` / ``F.conv3d`` / ``F.max_pool3d``), forward and float32 only; a ``Case``
holds its spatial size, window, stride and pad as an int (every axis) or one per axis, its op naming the
number of axes. On a GPU a 3-D row with algorithm ``auto`` / ``igemm`` runs one ``conv3d_igemm`` launch, a
row naming another 2-D algorithm the depth-tap lowering (``gpuconv/_conv_nd.py``) with it, 1-D rows the 2-D
kernels on a unit-height view; the kernel column is ``gpuconv.last_kernel()``'s, the lowering included.

Method
------
* Inputs ``x ~ N(0, 1)``, weights ``~ N(0, 1/fan_in)``, no bias; PyTorch gets the very same arrays
  zero-copy (``torch.from_numpy`` / ``torch.as_tensor`` of the CuPy array, pointer checked).
* Before anything is timed, every contender's output is checked against the reference: PyTorch on the
  inputs upcast to float32 with TF32 off (without PyTorch, on a GPU: gpuconv's NumPy path on host copies;
  on the CPU: nothing, the rows say "unchecked"). Tolerances: ``TOLERANCES``; ``TF32_TOLERANCE`` for
  cuDNN's TF32 column and for our tensor-core algorithms on float32 (``igemm_tc``, TF32 operands), whose
  like-for-like peer is that TF32 column. A wrong answer fails its
  row and is not timed; an algorithm that declines the case (``ValueError`` by explicit rule) gives a
  "declined" row with the message.
* GPU timing: CuPy and PyTorch share one CUDA stream (a CuPy stream, wrapped for PyTorch by
  ``torch.cuda.ExternalStream``). Each repetition first writes a buffer of twice the device's L2 size
  (``cudaDevAttrL2CacheSize``), flushing the L2, then a one-thread spin kernel keeps the stream busy
  for ``SPIN_US`` while the host enqueues the call between two CUDA events: the figure is the GPU's
  execution time, without the host's launch overhead. The contenders take turns within each repetition
  (order reversed every other repetition). Warm-up calls come first (NVRTC compiles our kernels; cuDNN
  picks its algorithm, ``torch.backends.cudnn.benchmark = True``).
* CPU timing: wall clock, all repetitions of one contender and then the next, with a pause between:
  OpenBLAS / OpenMP worker threads keep spinning after a call and would steal cores from the other
  library. ``--rounds R`` splits the repetitions into R such rounds, which contender goes first
  alternating, so that both see the same machine load. No cache flush.
* Figures: median, min and max over the repetitions; FLOP/s (a multiply-add is 2 flops) or, for pooling
  and depthwise layers (memory-bound), bytes/s with bytes = input + weight + output; the fraction of the
  roofline, ``max(flops / peak, bytes / bandwidth) / time``; and the speed relative to the peer,
  ``peer time / our time`` (above 1: ours is faster).
* Roofline figures. GPU: FP32 peak = SMs x FP32 lanes per SM (``FP32_LANES_PER_SM``, by compute
  capability) x 2 x clock rate (``cudaDevAttrClockRate``), used for every dtype (our CUDA-core kernels
  compute in float32; tensor-core paths, cuDNN's and ``igemm_tc``, can exceed it); bandwidth = a device-to-device copy
  measured at start (bytes read + written). CPU: peak = a measured float32 GEMM (``numpy.matmul``,
  all BLAS threads), bandwidth = a measured copy on all cores.

Gradients (``--backward``, instead of the forward suite; not part of ``--quick``): for the suite's float32
layers, ``gpuconv.grad``'s input ('data') and weight ('filter') gradients of the convolutions and input
gradients of the pooling layers against the ATen backward ops PyTorch's autograd runs (cuDNN on a GPU),
checked and timed as above (the check relative to the same gradient of the operands' absolute values, see
``backward``). Their rows carry ``direction`` (absent: forward, as in every file written before) and get a
table of their own with the geometric mean of time ours / PyTorch; on the CPU, the NumPy path's bar
(``suite.BACKWARD_BAR``: within 2x of PyTorch in geometric mean), met or not.

Output: ``<out>/<device>.json`` (every figure, versions, commit), ``.md`` (the table) and ``.png`` (speed
relative to the peer per layer, and the roofline; needs matplotlib, the ``plot`` extra). Full-suite
results in ``bench/results`` feed the README's "Benchmarks" section (``bench/update_readme.py`` of the
repository, not part of the package).

Modules, one concern each (none imports ``cli``; ``cli`` ties them together):
``suite`` (the layers, ``Case``), ``stats`` (roofline, statistics, checks, call order), ``environment``
(commit, CPU name, versions, log), ``peers`` (PyTorch: import, TF32 switches, its kernel choice),
``platforms`` (CPU and GPU: device, roofline figures, arrays, timing), ``backward`` (a gradient's operands,
calls and reference), ``runner`` (a case, a run),
``render`` (a results file as Markdown), ``plot`` (its PNG), ``results`` (the files: JSON schema, names,
writing, re-rendering), ``cli`` (``python -m gpuconv bench``).
"""


from .cli import USAGE, add_arguments, main
from .results import SCHEMA, rerender, write_json, write_results
from .render import render_markdown
from .runner import failed, run_bench
from .suite import Case, build_backward, build_suite, build_targets, select

__all__ = ["USAGE", "add_arguments", "main", "SCHEMA", "rerender", "write_json", "write_results",
           "render_markdown", "failed", "run_bench", "Case", "build_backward", "build_suite", "build_targets",
           "select"]
