"""rbf_mmd against a direct O(n^2) formula, psp and firing_rate against loops."""
import math

import pytest
import torch

from spikingjelly_vae import firing_rate, psp, rbf_mmd


def direct_mmd(x, y, mul=2.0, num=5):
    """Reference MMD_loss ('rbf', kernel_mul 2, kernel_num 5) written with explicit loops."""
    a = torch.cat([x, y]).double()
    m = a.shape[0]
    dist = [[float(((a[i] - a[j]) ** 2).sum()) for j in range(m)] for i in range(m)]
    b = sum(map(sum, dist)) / (m * m - m)
    bws = [b / mul ** (num // 2) * mul**i for i in range(num)]
    k = [[sum(math.exp(-dist[i][j] / bw) for bw in bws) for j in range(m)] for i in range(m)]
    n = x.shape[0]
    xx = sum(k[i][j] for i in range(n) for j in range(n)) / n**2
    yy = sum(k[i][j] for i in range(n, m) for j in range(n, m)) / (m - n) ** 2
    xy = sum(k[i][j] for i in range(n) for j in range(n, m)) / (n * (m - n))
    return xx + yy - 2 * xy


def test_rbf_mmd_matches_direct_formula():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(6, 5, generator=gen)
    y = torch.rand(6, 5, generator=gen) * 0.5
    assert rbf_mmd(x, y).item() == pytest.approx(direct_mmd(x, y), rel=1e-5)
    assert rbf_mmd(x, x).item() == pytest.approx(0.0, abs=1e-6)


def test_rbf_mmd_gradient_has_no_path_through_bandwidth():
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(4, 3, generator=gen, dtype=torch.float64).requires_grad_()
    y = torch.rand(4, 3, generator=gen, dtype=torch.float64)
    rbf_mmd(x, y).backward()
    a = torch.cat([x.detach(), y])
    b = ((a[:, None] - a[None]) ** 2).sum(-1).sum() / (8 * 8 - 8)  # fixed bandwidth

    def fixed_b(xx):
        aa = torch.cat([xx, y])
        d = ((aa[:, None] - aa[None]) ** 2).sum(-1)
        k = sum(torch.exp(-d / (b / 4 * 2**i)) for i in range(5))
        return k[:4, :4].mean() + k[4:, 4:].mean() - 2 * k[:4, 4:].mean()

    x2 = x.detach().clone().requires_grad_()
    fixed_b(x2).backward()
    torch.testing.assert_close(x.grad, x2.grad)


def test_rbf_mmd_bad_shapes():
    with pytest.raises(ValueError, match=r"\[n, d\]"):
        rbf_mmd(torch.rand(3, 4), torch.rand(3, 5))


def test_psp_and_firing_rate():
    x = torch.rand(6, 3, 2)
    s, ref = torch.zeros(3, 2), []
    for t in range(6):
        s = s + (x[t] - s) / 2
        ref.append(s)
    torch.testing.assert_close(psp(x), torch.stack(ref))
    assert torch.equal(firing_rate(torch.tensor([[1.0], [0.0], [1.0], [1.0]])), torch.tensor([0.75]))


def test_poisson_equations_7_and_8_against_loops():
    """z_t = 1[u_t < r] (Eq. 7); dL/dr = sum_t dL/dz_t 1[|r - u_t| < w] / (2w) (Eq. 8), element by element."""
    from spikingjelly_vae.functional import poisson_fire, poisson_surrogate_grad, poisson_window
    from spikingjelly_vae.neuron import poisson_spikes

    gen = torch.Generator().manual_seed(0)
    rate = torch.rand(3, 4, generator=gen, dtype=torch.float64)
    uniform = torch.rand(5, 3, 4, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    g = torch.randn(5, 3, 4, generator=gen, dtype=torch.float64)
    z = poisson_fire(rate, uniform)
    w = 0.3
    grad = poisson_surrogate_grad(g, poisson_window(rate, uniform, w), 1 / (2 * w))
    for i in range(3):
        for j in range(4):
            r = rate[i, j].item()
            expected = sum(g[t, i, j].item() for t in range(5) if abs(r - uniform[t, i, j].item()) < w) / (2 * w)
            assert grad[i, j].item() == pytest.approx(expected, abs=1e-12)
            for t in range(5):
                assert z[t, i, j].item() == float(uniform[t, i, j].item() < r)
    r = rate.clone().requires_grad_()
    spikes = poisson_spikes(r, 5, half_width=w, generator=torch.Generator().manual_seed(7))
    (spikes * g).sum().backward()
    assert torch.equal(spikes, z) and torch.equal(r.grad, grad)  # the same u from the same generator
