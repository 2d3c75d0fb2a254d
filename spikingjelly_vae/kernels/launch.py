"""Compile (once per dtype, cached) and launch our CUDA kernels with CuPy on torch's current stream.

Tensors go in as raw device pointers (``data_ptr()`` as a 64-bit integer), so any storage dtype works
(bfloat16 has no ``__cuda_array_interface__``) and no array conversion or stream synchronisation happens.
"""
import functools

import numpy as np
import torch

from .dispatch import KERNEL_DTYPES, import_cupy
from .sources import NVRTC_OPTIONS, kernel_source

BLOCK = 256


@functools.lru_cache(maxsize=None)
def _module(dtype_name: str):
    cupy, why = import_cupy()
    if cupy is None:
        raise RuntimeError(why)
    # RawModule compiles lazily with NVRTC for the current device and caches per device (and on disk).
    return cupy.RawModule(code=kernel_source(dtype_name), options=NVRTC_OPTIONS)


@functools.lru_cache(maxsize=None)
def get_kernel(name: str, dtype: torch.dtype):
    """The compiled kernel ``name`` for tensors of ``dtype``."""
    return _module(KERNEL_DTYPES[dtype]).get_function(name)


def ptr(t) -> np.uint64:
    """A tensor's device address as a kernel argument (0, a null pointer, for None)."""
    return np.uint64(0 if t is None else t.data_ptr())


def launch(name: str, dtype: torch.dtype, device: torch.device, n: int, args) -> None:
    """Run kernel ``name`` with one thread per neuron (``n`` threads) on torch's current CUDA stream."""
    if n == 0:
        return
    cupy, _ = import_cupy()
    kernel = get_kernel(name, dtype)
    grid = (n + BLOCK - 1) // BLOCK
    with cupy.cuda.Device(device.index):
        stream = cupy.cuda.ExternalStream(torch.cuda.current_stream(device).cuda_stream, device.index)
        with stream:
            kernel((grid,), (BLOCK,), tuple(args))
