"""gpuconv: 1-D, 2-D and 3-D convolution and pooling for CuPy, with our own CUDA kernels, and a NumPy fallback with
the same answers. Semantics follow ``torch.nn.functional`` (NCHW, cross-correlation)."""

from ._backend import KernelRecord, backend_info, last_kernel
from ._cuda.autotune import autotune_choices, clear_autotune_cache
from ._cuda.runtime import precompile
from ._cuda.settings import set_autotune, set_tensor_cores
from ._grad_conv import conv2d_backward, conv_transpose2d
from .conv import conv2d
from .conv_nd import conv1d, conv3d, conv_transpose1d, conv_transpose3d
from ._grad_conv_nd import conv1d_backward, conv3d_backward
from ._receptive_field import ReceptiveField, receptive_field
from .pool import adaptive_avg_pool2d, adaptive_max_pool2d, avg_pool2d, max_pool2d
from .pool_nd import adaptive_avg_pool1d, adaptive_max_pool1d, avg_pool1d, avg_pool3d, max_pool1d, max_pool3d
from .pool_nd import adaptive_avg_pool3d, adaptive_max_pool3d
from .shapes import conv2d_num_params, conv2d_output_shape, pool2d_output_shape
from . import grad  # noqa: E402  (gpuconv.grad.conv2d_input etc., as torch.nn.grad)
from . import cudnn  # noqa: E402  (drop-in for CuPy 13's cupy.cudnn convolution and pooling functions)

__version__ = "0.1.0"

__all__ = [
    "conv2d", "conv2d_backward", "conv_transpose2d", "grad",
    "conv1d", "conv3d", "conv_transpose1d", "conv_transpose3d", "cudnn",
    "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "adaptive_max_pool2d",
    "max_pool1d", "avg_pool1d", "max_pool3d", "avg_pool3d", "adaptive_avg_pool1d", "adaptive_max_pool1d",
    "conv2d_output_shape", "pool2d_output_shape", "conv2d_num_params",
    "backend_info", "last_kernel", "KernelRecord", "set_autotune", "autotune_choices", "clear_autotune_cache",
    "set_tensor_cores", "precompile", "__version__",
    "receptive_field", "ReceptiveField",
    "adaptive_avg_pool3d", "adaptive_max_pool3d",
    "conv1d_backward", "conv3d_backward",
]
