"""The CUDA kernel sources run on the CPU: compiled by a host C++ compiler with blockIdx/threadIdx emulated.

This checks, without a GPU, the kernels' index arithmetic, their float32 operation order (bit-identical to
the torch path), the half/bfloat16 conversions (host branch of the half conversion; the device uses PTX
``cvt``), the Python launch arguments (count and C types against each kernel's signature) and the
autograd Functions of the CuPy path, by swapping the CuPy launcher for the emulator.
"""
import ctypes
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch

from spikingjelly_vae.kernels import lif as klif
from spikingjelly_vae.kernels import poisson as kpoisson
from spikingjelly_vae.kernels.launch import BLOCK
from spikingjelly_vae.kernels.sources import KERNEL_NAMES, kernel_source

CXX = shutil.which("g++") or shutil.which("c++")
pytestmark = pytest.mark.skipif(CXX is None, reason="no host C++ compiler")

PRELUDE = r"""
#define __global__
#define __device__
struct emu_dim3 { unsigned int x, y, z; };
static emu_dim3 blockIdx, blockDim, threadIdx;
"""
DTYPE_NAMES = {torch.float32: "float", torch.float16: "half", torch.bfloat16: "bfloat16"}
C_TYPES = {"ptr": (np.uint64, ctypes.c_void_p), "long long": (np.int64, ctypes.c_longlong),
           "int": (np.int32, ctypes.c_int), "float": (np.float32, ctypes.c_float)}


def signatures(source):
    """{kernel name: [C type of each parameter: "ptr", "long long", "int" or "float"]} from the source."""
    out = {}
    for name, params in re.findall(r'extern "C" __global__ void (\w+)\(([^)]*)\)', source):
        kinds = []
        for p in params.split(","):
            p = " ".join(p.replace("const", " ").replace("__restrict__", " ").split()[:-1])
            kinds.append("ptr" if p.endswith("*") else p)
        out[name] = kinds
    return out


@pytest.fixture(scope="module")
def emulators(tmp_path_factory):
    """{dtype name: (ctypes library, signatures)}; each library exports emu_<kernel>(grid, block, args)."""
    libs = {}
    for dtype in DTYPE_NAMES.values():
        source = kernel_source(dtype)
        sigs = signatures(source)
        assert sorted(sigs) == sorted(KERNEL_NAMES)
        wrappers = []
        for name, kinds in sigs.items():
            params = ", ".join(f"{'void*' if k == 'ptr' else k} a{i}" for i, k in enumerate(kinds))
            # cast each void* back to the kernel's own parameter type via decltype of a function pointer
            args = ", ".join(f"a{i}" for i in range(len(kinds)))
            wrappers.append(
                f'extern "C" void emu_{name}(unsigned int grid, unsigned int block, {params}) {{\n'
                f"  blockDim.x = block;\n"
                f"  for (unsigned int b = 0; b < grid; ++b) for (unsigned int k = 0; k < block; ++k) {{\n"
                f"    blockIdx.x = b; threadIdx.x = k;\n"
                f"    emu_call({name}, {args});\n"
                f"  }}\n}}\n")
        if dtype != "float":
            wrappers.append(
                'extern "C" void emu_to_float_n(const scalar_t* in, float* out, long long n) '
                "{ for (long long i = 0; i < n; ++i) out[i] = to_float(in[i]); }\n"
                'extern "C" void emu_from_float_n(const float* in, scalar_t* out, long long n) '
                "{ for (long long i = 0; i < n; ++i) out[i] = from_float(in[i]); }\n")
        helper = r"""
template <typename... P, typename... A>
static void emu_call(void (*kernel)(P...), A... args) { kernel(((P)(args))...); }
"""
        path = tmp_path_factory.mktemp(f"emu_{dtype}")
        (path / "k.cpp").write_text(PRELUDE + source + helper + "".join(wrappers))
        cmd = [CXX, "-std=c++14", "-O1", "-ffp-contract=off", "-fPIC", "-shared", "-Wall", "-Werror",
               "-Wno-unused-function", str(path / "k.cpp"), "-o", str(path / "k.so")]
        res = subprocess.run(cmd, capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        libs[dtype] = (ctypes.CDLL(str(path / "k.so")), sigs)
    return libs


@pytest.fixture
def emulated(emulators, monkeypatch):
    """Replace the CuPy launcher of the LIF and Poisson modules by the host emulator."""
    calls = []

    def launch(name, dtype, device, n, args):
        lib, sigs = emulators[DTYPE_NAMES[dtype]]
        kinds = sigs[name]
        assert len(args) == len(kinds), f"{name}: {len(args)} launch args for {len(kinds)} parameters"
        c_args = []
        for i, (arg, kind) in enumerate(zip(args, kinds)):
            np_type, c_type = C_TYPES[kind]
            assert type(arg) is np_type, f"{name} arg {i}: {kind} needs {np_type.__name__}, got {type(arg)}"
            c_args.append(c_type(int(arg)) if kind == "ptr" else c_type(arg.item()))
        grid = (n + BLOCK - 1) // BLOCK
        calls.append((name, grid))
        getattr(lib, f"emu_{name}")(ctypes.c_uint(grid), ctypes.c_uint(BLOCK), *c_args)

    monkeypatch.setattr(klif, "launch", launch)
    monkeypatch.setattr(kpoisson, "launch", launch)
    return calls


def _input(shape, seed, dtype):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * 0.4 + 0.12).to(dtype)


def _bits(t):
    return t.view({torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}[t.dtype])


def _run_lif(fn, inp, v0, p):
    a = inp.clone().requires_grad_()
    v = None if v0 is None else v0.clone().requires_grad_()
    spikes, v_last, h_seq = fn.apply(a, v, p)
    return a, v, spikes, v_last, h_seq


@pytest.mark.parametrize("dtype", list(DTYPE_NAMES))
@pytest.mark.parametrize("shape", [(16, 1), (16, 3, 100), (1, 5), (7, 2, 2, 3)])
@pytest.mark.parametrize("setting", [
    dict(decay=0.25, v_threshold=0.2, v_reset=0.0, centre=0.0, half_width=0.5),
    dict(decay=0.6, v_threshold=0.3, v_reset=-0.1, centre=0.25, half_width=0.3)])
def test_lif_kernel_equals_torch_path_bitwise(emulated, dtype, shape, setting):
    """Spikes, h, v_last and the gradients into x and v_init, from a reset or a given membrane, with
    gradients on the spikes, on v_last, on h, or on all (null-pointer paths for the missing ones)."""
    p = klif.LIFParams(**setting)
    x = _input(shape, 1, dtype)
    x_view = _input((shape[1], shape[0], *shape[2:]), 1, dtype).transpose(0, 1)  # non-contiguous too
    grad, grad_v, grad_h = _input(shape, 2, dtype), _input(shape[1:], 4, torch.float32), _input(shape, 5, dtype)
    for inp in (x, x_view):
        for v0 in (None, _input(shape[1:], 3, torch.float32)):
            for used in ("spikes", "v_last", "h", "all"):
                a_k, v_k, *res_k = _run_lif(klif.LIFCuPy, inp, v0, p)
                a_t, v_t, *res_t = _run_lif(klif.LIFTorch, inp, v0, p)
                (out_k, vl_k, h_k), (out_t, vl_t, h_t) = res_k, res_t
                assert out_k.dtype == dtype and torch.equal(out_k, out_t)
                assert vl_k.dtype == torch.float32 and torch.equal(_bits(vl_k), _bits(vl_t))
                assert h_k.dtype == dtype and torch.equal(_bits(h_k), _bits(h_t))
                outs = {"spikes": [0], "v_last": [1], "h": [2], "all": [0, 1, 2]}[used]
                grads = (grad, grad_v, grad_h)
                torch.autograd.backward([res_k[i] for i in outs], [grads[i] for i in outs])
                torch.autograd.backward([res_t[i] for i in outs], [grads[i] for i in outs])
                assert torch.equal(a_k.grad, a_t.grad)
                if v0 is not None:
                    assert v_k.grad.dtype == torch.float32 and torch.equal(v_k.grad, v_t.grad)
            h_k = klif.cupy_forward(inp, p, keep_h=True, v_init=v0)[1]
            h_t = klif.torch_forward(inp, p, keep_h=True, v_init=v0)[1]
            assert torch.equal(_bits(h_k), _bits(h_t))
            # null h and v_last pointers (the no-grad path)
            s_k, no_h, no_v = klif.cupy_forward(inp, p, keep_h=False, v_init=v0, keep_v=False)
            assert no_h is None and no_v is None and torch.equal(s_k, out_t)
    n = x[0].numel()
    assert ("lif_forward", (n + BLOCK - 1) // BLOCK) in emulated
    assert ("lif_backward", (n + BLOCK - 1) // BLOCK) in emulated


@pytest.mark.parametrize("dtype", list(DTYPE_NAMES))
@pytest.mark.parametrize("shape", [(3,), (4, 300)])
@pytest.mark.parametrize("half_width", [0.5, 0.3])
def test_poisson_kernel_equals_torch_path_bitwise(emulated, dtype, shape, half_width):
    g = torch.Generator().manual_seed(0)
    rate = torch.rand(shape, generator=g).to(dtype)
    uniform = torch.rand((16, *shape), generator=g).to(dtype)
    a, b = rate.clone().requires_grad_(), rate.clone().requires_grad_()
    z_k = kpoisson.PoissonCuPy.apply(a, uniform, half_width)
    z_t = kpoisson.PoissonTorch.apply(b, uniform, half_width)
    assert z_k.dtype == dtype and torch.equal(z_k, z_t)
    grad = _input((16, *shape), 3, dtype)
    z_k.backward(grad)
    z_t.backward(grad)
    assert torch.equal(a.grad, b.grad)
    _, w_k = kpoisson.cupy_forward(rate, uniform, half_width, keep_window=True)
    _, w_t = kpoisson.torch_forward(rate, uniform, half_width, keep_window=True)
    assert w_k.dtype == torch.uint8 and torch.equal(w_k, w_t)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_storage_conversions_match_torch(emulators, dtype):
    """to_float on all 65536 bit patterns and from_float (round to nearest even, subnormals, overflow)
    on random float32 bit patterns of every exponent, against torch's own conversions."""
    lib, _ = emulators[DTYPE_NAMES[dtype]]
    bits16 = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16)
    wide = torch.empty(65536, dtype=torch.float32)
    lib.emu_to_float_n(ctypes.c_void_p(bits16.data_ptr()), ctypes.c_void_p(wide.data_ptr()),
                       ctypes.c_longlong(65536))
    expected = bits16.view(dtype).float()
    nan = expected.isnan()
    assert torch.equal(wide.isnan(), nan) and torch.equal(wide[~nan].view(torch.int32),
                                                          expected[~nan].view(torch.int32))

    g = torch.Generator().manual_seed(0)
    bits32 = torch.randint(-2**31, 2**31 - 1, (200000,), generator=g, dtype=torch.int64).to(torch.int32)
    ties = (torch.randint(0, 2**15, (20000,), generator=g, dtype=torch.int32) << 16) | 0x8000  # bf16 ties
    halfties = (torch.randint(0x33000000 >> 13, 0x47800000 >> 13, (20000,), generator=g,
                              dtype=torch.int32) << 13) | 0x1000  # half ties, subnormal range included
    floats = torch.cat([bits32, ties, halfties]).view(torch.float32)
    narrow = torch.empty(floats.numel(), dtype=torch.int16)
    lib.emu_from_float_n(ctypes.c_void_p(floats.data_ptr()), ctypes.c_void_p(narrow.data_ptr()),
                         ctypes.c_longlong(floats.numel()))
    expected = floats.to(dtype)
    nan = floats.isnan()
    assert narrow[nan].view(dtype).isnan().all()
    assert torch.equal(narrow[~nan], expected[~nan].view(torch.int16))


def test_signature_parser():
    sigs = signatures(kernel_source("float"))
    assert sigs["lif_forward"] == ["ptr"] * 5 + ["long long", "int", "float", "float", "float"]
    assert sigs["lif_backward"] == ["ptr"] * 7 + ["long long", "int"] + ["float"] * 5
    assert sigs["poisson_backward"] == ["ptr", "ptr", "ptr", "long long", "int", "float"]


@pytest.mark.parametrize("training", [True, False])
def test_tdbn_lif_cupy_path_equals_torch_path(emulated, training):
    """The fused tdBN + LIF with its LIF part on the (emulated) CUDA kernels, forward and recomputing
    backward, equals its torch path bit for bit."""
    from spikingjelly_vae.kernels import bn_lif as ktdbn

    g = torch.Generator().manual_seed(7)
    x, w, b = torch.randn(5, 2, 3, 4, 4, generator=g), torch.rand(3, generator=g) + 0.5, torch.zeros(3)
    grad = torch.randn(5, 2, 3, 4, 4, generator=g)
    p = klif.LIFParams(0.25, 0.2, 0.0, 0.0, 0.5)
    out = []
    for cupy in (True, False):
        leaves = [t.clone().requires_grad_() for t in (x, w, b)]
        bn = (torch.zeros(3), torch.ones(3), training, 0.1, 1e-5, 0.2)
        spikes, _ = ktdbn.TdBNLIF.apply(*leaves, None, bn, p, cupy)
        spikes.backward(grad)
        out.append((spikes, bn[0], *(t.grad for t in leaves)))
    assert all(torch.equal(a, c) for a, c in zip(*out))
    assert any(name == "lif_backward" for name, _ in emulated)
