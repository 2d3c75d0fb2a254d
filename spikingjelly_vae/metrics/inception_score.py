"""Inception Score with torchvision's ImageNet `inception_v3` (ESVAE paper Sec. IV-C, Table I; Salimans et al. 2016).

IS = exp(mean_i KL(p(y|x_i) || p(y))), p(y) the mean of p(y|x) over the split; reported as the mean
and standard deviation over splits of equal size.
- ``reference`` protocol (the paper's numbers): images (x + 1) / 2 * 255 in [0, 255], grey repeated
  to RGB, bilinear to 299 (align_corners=False), fed WITHOUT ImageNet normalisation (the reference
  quirk), softmax over the 1000 logits; one split per generated batch.
- ``standard`` protocol: (x + 1) / 2 in [0, 1], bilinear to 299, normalised with the ImageNet mean
  and std (what the weights were trained on); 10 splits.
The weights file (torchvision's `inception_v3_google-0cc3c7bd.pth`) must be given with
`--is-weights` / env SJVAE_IS_WEIGHTS; nothing is downloaded, and without it IS is unavailable
(a randomly initialised network is never used).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..atomic import sha256_file
from .resources import MetricUnavailable, resolve_file

__all__ = ["IS_PROTOCOLS", "inception_score_from_probs", "load_is_inception", "inception_probs",
           "compute_inception_score", "TORCHVISION_SHA256_PREFIX"]

IS_PROTOCOLS = ("reference", "standard")
IS_ENV, IS_OPTION = "SJVAE_IS_WEIGHTS", "--is-weights"
TORCHVISION_FILE = "inception_v3_google-0cc3c7bd.pth"
TORCHVISION_SHA256_PREFIX = "0cc3c7bd"  # torchvision names its files by the sha256 prefix
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def inception_score_from_probs(probs, splits: int) -> tuple[float, float]:
    """(mean, std) over `splits` equal parts of probs [N, K] of exp(mean KL(p(y|x) || p(y))).

    Split k holds rows k*(N//splits) ... (k+1)*(N//splits) - 1 (as the reference); 0 log 0 = 0."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or splits < 1 or p.shape[0] < splits:
        raise ValueError(f"need probs [N >= splits, K] and splits >= 1, got {p.shape} and {splits}")
    size = p.shape[0] // splits
    scores = []
    for k in range(splits):
        part = p[k * size:(k + 1) * size]
        py = part.mean(axis=0, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            kl = np.where(part > 0, part * (np.log(part) - np.log(py)), 0.0).sum(axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


def load_is_inception(path=None, device="cpu"):
    """torchvision inception_v3 (transform_input=False) with the ImageNet weights from `path` / env.

    Returns (net, info) with info = {'path', 'sha256', 'torchvision_imagenet'}; the last says whether
    the file's checksum is torchvision's published one."""
    file = resolve_file(path, IS_ENV, IS_OPTION,
                        "Inception Score (needs torchvision's ImageNet Inception-v3 weights "
                        f"{TORCHVISION_FILE}; the FID TorchScript network has no logits layer)",
                        names=(TORCHVISION_FILE,))
    from torchvision.models import inception_v3
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        fc = state.get("fc.weight") if isinstance(state, dict) else None
        if fc is None or tuple(fc.shape) != (1000, 2048):
            raise ValueError("no 'fc.weight' of shape (1000, 2048)")
        net = inception_v3(weights=None, aux_logits=True, transform_input=False, init_weights=False)
        net.load_state_dict(state)
    except Exception as e:
        raise MetricUnavailable(f"{str(file)!r} (from {IS_OPTION} / {IS_ENV}) is not a torchvision "
                                f"inception_v3 state_dict: {e}") from e
    sha = sha256_file(file)
    info = {"path": str(file), "sha256": sha, "torchvision_imagenet": sha.startswith(TORCHVISION_SHA256_PREFIX)}
    return net.eval().to(device), info


@torch.no_grad()
def inception_probs(batch: torch.Tensor, net, protocol: str = "reference", device=None) -> np.ndarray:
    """Softmax class probabilities [N, 1000] of a batch in [-1, 1] under `protocol`."""
    if protocol not in IS_PROTOCOLS:
        raise ValueError(f"unknown IS protocol {protocol!r}; choose one of {', '.join(IS_PROTOCOLS)}")
    if batch.dim() != 4 or batch.shape[1] not in (1, 3):
        raise ValueError(f"images must be [N, 1 or 3, H, W], got {tuple(batch.shape)}")
    device = device or next(net.parameters()).device
    x = (batch.to(device, torch.float32) + 1.0) / 2.0
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    if protocol == "reference":
        x = x * 255.0  # the quirk: [0, 255] straight into a network trained on normalised input
    else:
        mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
        x = (x - mean) / std
    x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
    net.eval()
    return F.softmax(net(x).double(), dim=1).cpu().numpy()


def compute_inception_score(batches, net, protocol: str = "reference", *, splits: int | None = None,
                            device=None) -> dict:
    """IS of all images in `batches`; splits default to the number of batches (reference) or 10."""
    probs, nb = [], 0
    for b in batches:
        probs.append(inception_probs(b, net, protocol, device))
        nb += 1
    if not probs:
        raise ValueError("no images reached the Inception network")
    splits = splits or (nb if protocol == "reference" else 10)
    mean, std = inception_score_from_probs(np.concatenate(probs), splits)
    return {"is": mean, "is_std": std, "splits": splits, "num_images": int(sum(len(p) for p in probs)),
            "protocol": protocol}
