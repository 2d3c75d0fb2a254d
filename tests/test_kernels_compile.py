"""The exact kernel source strings compile for real: with nvcc (PTX + SASS for several GPU generations) and
with NVRTC, the compiler CuPy's RawModule uses, called here through ctypes (no GPU needed for either)."""
import ctypes
import glob
import os
import re
import shutil
import subprocess
import sys

import pytest

from spikingjelly_vae.kernels.sources import DTYPES, KERNEL_NAMES, NVRTC_OPTIONS, kernel_source

NVCC = shutil.which("nvcc")


@pytest.mark.skipif(NVCC is None, reason="nvcc not found")
@pytest.mark.parametrize("dtype", DTYPES)
def test_nvcc_compiles_each_kernel_source(dtype, tmp_path):
    src = tmp_path / f"kernels_{dtype}.cu"
    src.write_text(kernel_source(dtype))
    ptx = tmp_path / "k.ptx"
    res = subprocess.run([NVCC, *NVRTC_OPTIONS, "-arch=sm_90", "-ptx", str(src), "-o", str(ptx)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "warning" not in res.stderr.lower(), res.stderr
    entries = set(re.findall(r"\.entry\s+(\w+)\(", ptx.read_text()))
    assert entries == set(KERNEL_NAMES)
    assert "fma." not in ptx.read_text()  # --fmad=false: same roundings as torch's separate mul and add
    # machine code for Turing, Ampere and Hopper (bfloat16/half conversions have no arch requirement)
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in (75, 80, 90)]
    res = subprocess.run([NVCC, *NVRTC_OPTIONS, *gencode, "-fatbin", str(src), "-o",
                          str(tmp_path / "k.fatbin")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "warning" not in res.stderr.lower(), res.stderr


def _find_nvrtc():
    names = ["nvrtc"]
    for base in sys.path:
        names += sorted(glob.glob(os.path.join(base, "nvidia", "*", "lib", "libnvrtc.so*")))
        names += sorted(glob.glob(os.path.join(base, "nvidia", "cuda_nvrtc", "lib", "libnvrtc.so*")))
    for name in names:
        try:
            return ctypes.CDLL(name if "/" in name else f"lib{name}.so")
        except OSError:
            continue
    return None


NVRTC = _find_nvrtc()


def nvrtc_compile(source: str, options):
    """(result code, log, ptx) of NVRTC on ``source`` with ``options``."""
    prog = ctypes.c_void_p()
    assert NVRTC.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), b"k.cu", 0, None, None) == 0
    opts = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
    rc = NVRTC.nvrtcCompileProgram(prog, len(options), opts)
    size = ctypes.c_size_t()
    NVRTC.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    NVRTC.nvrtcGetProgramLog(prog, log)
    ptx = b""
    if rc == 0:
        NVRTC.nvrtcGetPTXSize(prog, ctypes.byref(size))
        buf = ctypes.create_string_buffer(size.value)
        NVRTC.nvrtcGetPTX(prog, buf)
        ptx = buf.value
    NVRTC.nvrtcDestroyProgram(ctypes.byref(prog))
    return rc, log.value.decode(errors="replace"), ptx.decode(errors="replace")


@pytest.mark.skipif(NVRTC is None, reason="libnvrtc not found")
@pytest.mark.parametrize("dtype", DTYPES)
def test_nvrtc_compiles_each_kernel_source(dtype):
    """NVRTC has no implicit CUDA headers: the sources must need none."""
    rc, log, ptx = nvrtc_compile(kernel_source(dtype), [*NVRTC_OPTIONS, "-arch=compute_90"])
    assert rc == 0, log
    assert "warning" not in log.lower(), log
    assert set(re.findall(r"\.entry\s+(\w+)\(", ptx)) == set(KERNEL_NAMES)
    assert "fma." not in ptx


@pytest.mark.skipif(NVRTC is None, reason="libnvrtc not found")
def test_nvrtc_reports_a_broken_source():
    rc, log, _ = nvrtc_compile(kernel_source("float").replace("to_float(x[k])", "to_float(y[k])"),
                               ["-arch=compute_90"])
    assert rc != 0 and "y" in log
