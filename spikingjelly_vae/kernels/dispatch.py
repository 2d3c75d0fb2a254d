"""Backend choice for our kernels: CuPy when it can run, else torch; one log line per reason.

Rule: "cupy" only when the tensor is on CUDA, its dtype has a kernel (float32, float16, bfloat16),
``import cupy`` works and CuPy sees a device; otherwise "torch". ``requested="torch"`` always gives torch;
``requested="cupy"`` falls back to torch with a WARNING that says why (the import error included).
"""
import functools
import logging

import torch

log = logging.getLogger("spikingjelly_vae.kernels")
BACKENDS = ("auto", "cupy", "torch")
KERNEL_DTYPES = {torch.float32: "float", torch.float16: "half", torch.bfloat16: "bfloat16"}
_said = set()


@functools.lru_cache(maxsize=None)
def import_cupy():
    """``(cupy module or None, reason it is unusable or "")``, evaluated once."""
    try:
        import cupy
    except Exception as err:  # any import failure, not only a missing package
        return None, f"CuPy is not importable ({type(err).__name__}: {err}); install spikingjelly-vae[cuda]"
    try:
        if not cupy.cuda.is_available():
            return None, "CuPy sees no CUDA device"
    except Exception as err:
        return None, f"CuPy cannot query CUDA ({type(err).__name__}: {err})"
    return cupy, ""


def _say(choice: str, reason: str, level: int) -> str:
    if (choice, reason) not in _said:
        _said.add((choice, reason))
        log.log(level, "spikingjelly_vae kernels: using the %s backend (%s)", choice, reason)
    return choice


def check_backend(requested: str, name: str = "backend") -> str:
    """``requested`` if it is one of BACKENDS, else a ValueError naming the argument ``name``."""
    if requested not in BACKENDS:
        raise ValueError(f"{name} must be one of {BACKENDS}, got {requested!r}")
    return requested


def select_backend(tensor: torch.Tensor, requested: str = "auto") -> str:
    """Return "cupy" or "torch" for ``tensor`` and the ``requested`` backend ("auto", "cupy", "torch")."""
    check_backend(requested)
    if requested == "torch":
        return _say("torch", "requested backend='torch'", logging.INFO)
    fallback = logging.WARNING if requested == "cupy" else logging.INFO
    if not tensor.is_cuda:
        return _say("torch", f"tensor is on {tensor.device.type}, the CuPy kernels need CUDA", fallback)
    if tensor.dtype not in KERNEL_DTYPES:
        return _say("torch", f"no CuPy kernel for dtype {tensor.dtype}", fallback)
    cupy, why = import_cupy()
    if cupy is None:
        return _say("torch", why, fallback)
    return _say("cupy", f"requested backend='{requested}', CUDA tensor and CuPy {cupy.__version__}",
                logging.INFO)
