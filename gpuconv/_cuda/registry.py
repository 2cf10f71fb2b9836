"""Every kernel instantiation the launch code can request, per source file.

``INSTANTIATIONS[source] = [name_expression, ...]``: the runtime compiles each source once with all of its
name expressions, and tests/test_nvrtc_compile.py compiles exactly this list for several architectures.
"""

from . import conv, pool

INSTANTIATIONS: dict[str, list[str]] = {**conv.INSTANTIATIONS, **pool.INSTANTIATIONS}
