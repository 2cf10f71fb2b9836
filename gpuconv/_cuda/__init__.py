"""CUDA backend: our kernels from ``kernels/*.cu`` launched through CuPy (or, in the tests, through the
CPU emulator in ``tests/emulator``, which implements the same runtime interface)."""
