"""CUDA C sources of the LIF and Poisson kernels, one source per storage dtype.

Every source is self-contained (no ``#include``), so NVRTC (through ``cupy.RawModule``) and ``nvcc`` compile
the same string. Tensors are read as contiguous ``[T, n]``: element (t, i) sits at ``t * n + i``; one
thread owns one neuron i and walks its T steps, so the whole sequence is one launch. All arithmetic is in
float32 and written one operation per statement in the order of the torch path (``kernels/lif.py``,
``kernels/poisson.py``); compiled with ``--fmad=false`` the results are bit-identical to it.

LIF (decay d, threshold th, reset value r, surrogate window centre c, half-width w, height 1/(2w)):
    forward   h_t = (v_{t-1} - r) * d + r + x_t,  s_t = 1[h_t >= th],  v_t = s_t ? r : h_t,
              v_{-1} = v_init[i] (r for a null pointer); v_last[i] = v_{T-1} unless null
    backward  gv = g_{t+1} * d, starting from grad_v_last[i] (0 for a null pointer),  m_t = 1[|h_t - c| < w]
              g_t = ((gs_t - gv * (h_t - r)) * m_t) / (2w) + (gv * (1 - s_t) + gh_t),   dL/dx_t = g_t
              (gs_t taken as absent, -(gv * (h_t - r)), for a null grad_spike; gh_t, the gradient on the
              stored h, skipped for a null grad_h), and
              grad_v_init[i] = g_0 * d unless null
              (autograd's grouping for the plain loop, so the torch loop's gradients are matched bit for bit)
    The membrane state (v_init, v_last, grad_v_last, grad_v_init) is float32 in every storage dtype.
Poisson (rates r of shape [n], uniform draws u of shape [T, n]):
    forward   z_t = 1[u_t < r],  window_t = 1[|r - u_t| < w]  (stored as uint8)
    backward  dL/dr = (sum_t window_t * gz_t) / (2w)
"""

KERNEL_NAMES = ("lif_forward", "lif_backward", "poisson_forward", "poisson_backward")
DTYPES = ("float", "half", "bfloat16")
NVRTC_OPTIONS = ("--fmad=false",)

_STORAGE = {
    "float": r"""
typedef float scalar_t;
__device__ inline float to_float(float x) { return x; }
__device__ inline float from_float(float x) { return x; }
""",
    # IEEE half kept as its 16 bits. On the device the PTX conversions; the plain-C branch (round to
    # nearest even, subnormals included) only serves host compilers that emulate the kernels in tests.
    "half": r"""
typedef unsigned short scalar_t;
union float_or_bits { float f; unsigned int u; };
__device__ inline unsigned int float_bits(float f) { float_or_bits c; c.f = f; return c.u; }
__device__ inline float bits_float(unsigned int u) { float_or_bits c; c.u = u; return c.f; }
#if defined(__CUDA_ARCH__)
__device__ inline float to_float(unsigned short h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}
__device__ inline unsigned short from_float(float f) {
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}
#else
__device__ inline float to_float(unsigned short h) {
    const unsigned int sign = ((unsigned int)h & 0x8000u) << 16;
    const unsigned int e = ((unsigned int)h >> 10) & 0x1fu;
    const unsigned int m = (unsigned int)h & 0x3ffu;
    if (e == 0x1fu) return bits_float(sign | 0x7f800000u | (m << 13));
    if (e != 0u) return bits_float(sign | ((e + 112u) << 23) | (m << 13));
    const float f = (float)m * 5.9604644775390625e-08f;  /* m * 2^-24, exact */
    return sign ? -f : f;
}
__device__ inline unsigned short from_float(float f) {
    const unsigned int x = float_bits(f);
    const unsigned int sign = (x >> 16) & 0x8000u;
    const unsigned int ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return (unsigned short)(sign | 0x7e00u);
    if (ax >= 0x477ff000u) return (unsigned short)(sign | 0x7c00u);
    if (ax >= 0x38800000u) {
        const unsigned int b = ax - 0x38000000u;
        return (unsigned short)(sign | ((b + 0xfffu + ((b >> 13) & 1u)) >> 13));
    }
    const unsigned int e = ax >> 23;
    if (e < 102u) return (unsigned short)sign;
    const unsigned int mant = (ax & 0x7fffffu) | 0x800000u;
    const unsigned int shift = 126u - e;
    unsigned int q = mant >> shift;
    const unsigned int rem = mant & ((1u << shift) - 1u);
    const unsigned int halfway = 1u << (shift - 1u);
    if (rem > halfway || (rem == halfway && (q & 1u))) q += 1u;
    return (unsigned short)(sign | q);
}
#endif
""",
    # bfloat16 is the upper half of a float32; rounding to nearest even by integer arithmetic.
    "bfloat16": r"""
typedef unsigned short scalar_t;
union float_or_bits { float f; unsigned int u; };
__device__ inline unsigned int float_bits(float f) { float_or_bits c; c.f = f; return c.u; }
__device__ inline float bits_float(unsigned int u) { float_or_bits c; c.u = u; return c.f; }
__device__ inline float to_float(unsigned short b) { return bits_float(((unsigned int)b) << 16); }
__device__ inline unsigned short from_float(float f) {
    const unsigned int x = float_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (unsigned short)0x7fc0u;
    return (unsigned short)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}
""",
}

_KERNELS = r"""
extern "C" __global__ void lif_forward(
    const scalar_t* __restrict__ x, const float* __restrict__ v_init, scalar_t* __restrict__ spike,
    scalar_t* __restrict__ h_seq, float* __restrict__ v_last,
    const long long n, const int steps, const float decay, const float v_threshold, const float v_reset)
{
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float v = (v_init != 0) ? v_init[i] : v_reset;
    for (int t = 0; t < steps; ++t) {
        const long long k = (long long)t * n + i;
        float h = v - v_reset;
        h = h * decay;
        h = h + v_reset;
        h = h + to_float(x[k]);
        const bool fire = h >= v_threshold;
        spike[k] = from_float(fire ? 1.0f : 0.0f);
        if (h_seq != 0) h_seq[k] = from_float(h);
        v = fire ? v_reset : h;
    }
    if (v_last != 0) v_last[i] = v;
}

extern "C" __global__ void lif_backward(
    const scalar_t* __restrict__ grad_spike, const scalar_t* __restrict__ grad_h,
    const scalar_t* __restrict__ spike, const scalar_t* __restrict__ h_seq,
    const float* __restrict__ grad_v_last, scalar_t* __restrict__ grad_x,
    float* __restrict__ grad_v_init, const long long n, const int steps, const float decay,
    const float v_reset, const float centre, const float half_width, const float two_w)
{
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float grad_v = (grad_v_last != 0) ? grad_v_last[i] : 0.0f;
    for (int t = steps - 1; t >= 0; --t) {
        const long long k = (long long)t * n + i;
        const float h = to_float(h_seq[k]);
        const float s = to_float(spike[k]);
        const float d = h - centre;
        const float mask = (d < half_width && d > -half_width) ? 1.0f : 0.0f;
        float go = h - v_reset;
        go = go * grad_v;
        go = (grad_spike != 0) ? to_float(grad_spike[k]) - go : -go;
        go = go * mask;
        go = go / two_w;
        float keep = 1.0f - s;
        keep = keep * grad_v;
        if (grad_h != 0) keep = keep + to_float(grad_h[k]);
        const float g = go + keep;
        grad_x[k] = from_float(g);
        grad_v = g * decay;
    }
    if (grad_v_init != 0) grad_v_init[i] = grad_v;
}

extern "C" __global__ void poisson_forward(
    const scalar_t* __restrict__ rate, const scalar_t* __restrict__ uniform, scalar_t* __restrict__ spike,
    unsigned char* __restrict__ window, const long long n, const int steps, const float half_width)
{
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float r = to_float(rate[i]);
    for (int t = 0; t < steps; ++t) {
        const long long k = (long long)t * n + i;
        const float u = to_float(uniform[k]);
        spike[k] = from_float(u < r ? 1.0f : 0.0f);
        if (window != 0) {
            const float d = r - u;
            window[k] = (d < half_width && d > -half_width) ? 1 : 0;
        }
    }
}

extern "C" __global__ void poisson_backward(
    const scalar_t* __restrict__ grad_spike, const unsigned char* __restrict__ window,
    scalar_t* __restrict__ grad_rate, const long long n, const int steps, const float height)
{
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float acc = 0.0f;
    for (int t = 0; t < steps; ++t) {
        const long long k = (long long)t * n + i;
        if (window[k]) acc = acc + to_float(grad_spike[k]);
    }
    grad_rate[i] = from_float(acc * height);
}
"""


def kernel_source(dtype: str) -> str:
    """The CUDA C source of all four kernels for storage ``dtype`` ("float", "half" or "bfloat16")."""
    if dtype not in _STORAGE:
        raise ValueError(f"no kernel source for dtype {dtype!r}; choose one of {DTYPES}")
    return f"// spikingjelly_vae kernels, storage dtype: {dtype}\n{_STORAGE[dtype]}{_KERNELS}"
