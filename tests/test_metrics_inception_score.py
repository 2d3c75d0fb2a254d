"""Inception Score: exact values on hand-made softmax outputs, the two input protocols, weight loading."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import entropy

from spikingjelly_vae.metrics.inception_score import (compute_inception_score, inception_probs,
                                                      inception_score_from_probs, load_is_inception)
from spikingjelly_vae.metrics.resources import MetricUnavailable


def test_one_hot_distinct_classes_give_k():
    assert inception_score_from_probs(np.eye(4), 1) == pytest.approx((4.0, 0.0))


def test_identical_rows_give_one():
    p = np.tile([0.2, 0.3, 0.5], (6, 1))
    assert inception_score_from_probs(p, 1)[0] == pytest.approx(1.0)


def test_two_rows_by_hand():
    p = np.array([[0.5, 0.5], [1.0, 0.0]])  # p(y) = (0.75, 0.25); 0 log 0 = 0
    kl1 = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    kl2 = math.log(1.0 / 0.75)
    assert inception_score_from_probs(p, 1)[0] == pytest.approx(math.exp((kl1 + kl2) / 2), rel=1e-12)


def test_splits_mean_and_std():
    # split 1: two distinct one-hots (IS 2); split 2: identical rows (IS 1); a 5th row is dropped
    p = np.array([[1, 0], [0, 1], [1, 0], [1, 0], [0, 1]], dtype=float)
    assert inception_score_from_probs(p, 2) == pytest.approx((1.5, 0.5))


def test_matches_scipy_entropy_loop():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(10) * 0.3, size=40)
    want = []
    for k in range(4):
        part = p[k * 10:(k + 1) * 10]
        py = part.mean(0)
        want.append(np.exp(np.mean([entropy(row, py) for row in part])))
    got = inception_score_from_probs(p, 4)
    assert got == pytest.approx((np.mean(want), np.std(want)), rel=1e-10)


def test_bad_splits_raise():
    with pytest.raises(ValueError):
        inception_score_from_probs(np.eye(3), 4)


class Recorder(torch.nn.Module):
    """Stand-in for inception_v3: records its input, returns fixed logits."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen = None

    def forward(self, x):
        self.seen = x.detach().clone()
        return torch.stack([x.mean((1, 2, 3)), -x.mean((1, 2, 3))], 1)


def test_reference_protocol_feeds_unnormalised_0_255():
    x = torch.tensor([-1.0, 1.0, 0.0, 0.5]).view(1, 1, 2, 2)
    net = Recorder()
    probs = inception_probs(x, net, "reference")
    pix = ((x + 1) / 2 * 255).repeat(1, 3, 1, 1)
    want = F.interpolate(pix, size=(299, 299), mode="bilinear", align_corners=False)
    torch.testing.assert_close(net.seen, want)
    torch.testing.assert_close(torch.from_numpy(probs), F.softmax(net(want).double(), 1))


def test_standard_protocol_normalises_with_imagenet_stats():
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    net = Recorder()
    inception_probs(x, net, "standard")
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    want = F.interpolate(((x + 1) / 2 - mean) / std, size=(299, 299), mode="bilinear", align_corners=False)
    torch.testing.assert_close(net.seen, want)


def test_reference_splits_default_to_batches():
    net = Recorder()
    batches = [torch.rand(4, 1, 8, 8) * 2 - 1 for _ in range(3)]
    r = compute_inception_score(batches, net, "reference")
    assert r["splits"] == 3 and r["num_images"] == 12


def test_missing_weights_say_which_option(monkeypatch):
    monkeypatch.delenv("SJVAE_IS_WEIGHTS", raising=False)
    with pytest.raises(MetricUnavailable, match="--is-weights.*SJVAE_IS_WEIGHTS"):
        load_is_inception(None)


def test_wrong_weights_file_is_refused(tmp_path):
    bad = tmp_path / "bad.pth"
    torch.save({"fc.weight": torch.zeros(3, 3)}, bad)
    with pytest.raises(MetricUnavailable, match="not a torchvision inception_v3"):
        load_is_inception(bad)


def test_loads_a_state_dict_and_flags_unknown_checksum(tmp_path):
    from torchvision.models import inception_v3
    path = tmp_path / "inception.pth"
    torch.save(inception_v3(weights=None, aux_logits=True, init_weights=False).state_dict(), path)
    net, info = load_is_inception(path)
    assert not net.training and net.transform_input is False
    assert info["torchvision_imagenet"] is False and len(info["sha256"]) == 64
