"""Compile (once per dtype, cached) and launch our CUDA kernels with CuPy on torch's current stream.

Tensors go in as raw device pointers (``data_ptr()`` as a 64-bit integer), so any storage dtype works
(bfloat16 has no ``__cuda_array_interface__``) and no array conversion or stream synchronisation happens.
Per call the launcher does no CuPy object creation: the compiled function (per kernel, dtype and device)
and the CuPy wrapper of each torch stream are cached, and the launch passes the stream explicitly instead
of entering CuPy's device and stream context managers.
"""
import functools

import numpy as np
import torch

from .dispatch import KERNEL_DTYPES, import_cupy
from .sources import NVRTC_OPTIONS, kernel_source

BLOCK = 256
_streams = {}  # (device index, cudaStream_t) -> CuPy stream wrapping torch's stream


@functools.lru_cache(maxsize=None)
def _module(dtype_name: str):
    cupy, why = import_cupy()
    if cupy is None:
        raise RuntimeError(why)
    # RawModule compiles lazily with NVRTC for the current device and caches per device (and on disk).
    return cupy.RawModule(code=kernel_source(dtype_name), options=NVRTC_OPTIONS)


@functools.lru_cache(maxsize=None)
def get_kernel(name: str, dtype: torch.dtype):
    """The ``cupy.RawKernel`` ``name`` for tensors of ``dtype``."""
    return _module(KERNEL_DTYPES[dtype]).get_function(name)


@functools.lru_cache(maxsize=None)
def _function(name: str, dtype: torch.dtype, device_index: int):
    """The compiled ``cupy.cuda.Function`` of kernel ``name`` on device ``device_index`` (compiled once)."""
    cupy, _ = import_cupy()
    with cupy.cuda.Device(device_index):
        return get_kernel(name, dtype).kernel


def wrap_stream(cupy, torch_stream):
    """A CuPy stream for ``torch_stream``: ``Stream.from_external`` (CuPy >= 14, CUDA stream protocol),
    else the older ``ExternalStream(ptr, device_id)``."""
    from_external = getattr(cupy.cuda.Stream, "from_external", None)
    if from_external is not None and hasattr(torch_stream, "__cuda_stream__"):
        return from_external(torch_stream)
    return cupy.cuda.ExternalStream(torch_stream.cuda_stream, torch_stream.device.index)


def current_stream(cupy, device: torch.device):
    """The cached CuPy wrapper of torch's current stream on ``device``."""
    torch_stream = torch.cuda.current_stream(device)
    key = (device.index, torch_stream.cuda_stream)
    stream = _streams.get(key)
    if stream is None:
        stream = _streams[key] = wrap_stream(cupy, torch_stream)
    return stream


def ptr(t) -> np.uint64:
    """A tensor's device address as a kernel argument (0, a null pointer, for None)."""
    return np.uint64(0 if t is None else t.data_ptr())


def launch(name: str, dtype: torch.dtype, device: torch.device, n: int, args) -> None:
    """Run kernel ``name`` with one thread per neuron (``n`` threads) on torch's current CUDA stream."""
    if n == 0:
        return
    cupy, _ = import_cupy()
    index = device.index if device.index is not None else torch.cuda.current_device()
    device = torch.device("cuda", index)
    function = _function(name, dtype, index)
    grid = ((n + BLOCK - 1) // BLOCK,)
    stream = current_stream(cupy, device)
    if index == torch.cuda.current_device():
        function(grid, (BLOCK,), tuple(args), stream=stream)
    else:
        with cupy.cuda.Device(index):
            function(grid, (BLOCK,), tuple(args), stream=stream)
