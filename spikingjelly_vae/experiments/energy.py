"""Synaptic operations, firing rates and an energy estimate per image, measured with forward hooks.

For every weight layer (Conv2d, ConvTranspose2d, Linear) call, with input a (rows = T*N folded, or N):
  synapses(a)   = number of (input element, output neuron) pairs joined by a weight (zero-padding taps
                  excluded), i.e. sum over inputs of their fan-out
  spike input (a in {0, 1}):  ACs  = sum over input spikes of their fan-out   (SOPs, accumulate only)
  analog input:               MACs = synapses of a dense input (every connection multiplies)
Per-image counts divide by the number of images. Energy: E = ACs * e_AC + MACs * e_MAC with the 45 nm
figures of Horowitz (ISSCC 2014): 32-bit float add 0.9 pJ, mult 3.7 pJ, so e_AC = 0.9 pJ and
e_MAC = 3.7 + 0.9 = 4.6 pJ. Bias adds, batch-norm (foldable into the weights at inference), neuron state
updates and memory traffic are not counted.
Spiking layers (SpikingJelly neurons, PoissonLatent): firing rate = mean of their 0/1 output.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Dict, List

import torch
import torch.nn.functional as F
from torch import nn

E_ADD_PJ = 0.9  # 32-bit float add, 45 nm (Horowitz 2014)
E_MULT_PJ = 3.7  # 32-bit float multiply, 45 nm (Horowitz 2014)
E_AC_PJ = E_ADD_PJ
E_MAC_PJ = E_MULT_PJ + E_ADD_PJ
WEIGHT_LAYERS = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)


def fan_out_count(layer: nn.Module, active: torch.Tensor) -> torch.Tensor:
    """Per input row, the sum over non-zero elements of ``active`` of their fan-out in ``layer``.

    Linear: nnz * out_features. Conv2d: sum over output positions of the active inputs under the kernel
    window (all input channels) times out_channels/groups. ConvTranspose2d: the same scatter count.
    Returns a float64 tensor ``[rows]``.
    """
    a = (active != 0).to(torch.float64)
    if isinstance(layer, nn.Linear):
        return a.flatten(1).sum(1) * layer.out_features
    if isinstance(layer, nn.Conv2d):
        if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
            raise ValueError(f"fan-out count supports zero padding with explicit sizes, got {layer}")
        ones = torch.ones(1, layer.in_channels, *layer.kernel_size, dtype=torch.float64, device=a.device)
        cover = F.conv2d(a, ones, stride=layer.stride, padding=layer.padding, dilation=layer.dilation)
        return cover.flatten(1).sum(1) * (layer.out_channels // layer.groups)
    if isinstance(layer, nn.ConvTranspose2d):
        ones = torch.ones(layer.in_channels, 1, *layer.kernel_size, dtype=torch.float64, device=a.device)
        cover = F.conv_transpose2d(a, ones, stride=layer.stride, padding=layer.padding,
                                   output_padding=layer.output_padding, dilation=layer.dilation)
        return cover.flatten(1).sum(1) * (layer.out_channels // layer.groups)
    raise TypeError(f"no fan-out rule for {type(layer).__name__}")


def is_binary(x: torch.Tensor) -> bool:
    """True when every element is 0 or 1 (a spike tensor)."""
    return bool(((x == 0) | (x == 1)).all())


def spiking_modules(model: nn.Module):
    """``(name, module)`` of the spiking layers: SpikingJelly neurons and PoissonLatent."""
    from spikingjelly.activation_based.neuron import BaseNode

    from ..neuron import PoissonLatent

    return [(n, m) for n, m in model.named_modules() if isinstance(m, (BaseNode, PoissonLatent))]


class OpCounter:
    """Forward hooks that tally synaptic operations per weight layer and spikes per spiking layer.

    ``with OpCounter(model) as c: run(...)``; then ``c.layers()`` and ``c.neurons()`` give per-layer totals
    over everything run inside the block (divide by the number of images for per-image numbers).
    ``analog=True`` counts every input as analog (MACs), for an ANN whose activations may happen to be 0/1.
    """

    def __init__(self, model: nn.Module, analog: bool = False):
        self.model, self.analog = model, bool(analog)
        self.ops: "OrderedDict[str, Dict]" = OrderedDict()
        self.spikes: "OrderedDict[str, Dict]" = OrderedDict()
        self._handles: List = []

    def __enter__(self):
        for name, m in self.model.named_modules():
            if isinstance(m, WEIGHT_LAYERS):
                self._handles.append(m.register_forward_hook(self._weight_hook(name)))
        for name, m in spiking_modules(self.model):
            self._handles.append(m.register_forward_hook(self._spike_hook(name)))
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()
        return False

    def _weight_hook(self, name: str) -> Callable:
        def hook(module, inputs, output):
            x = inputs[0].detach()
            if isinstance(module, nn.Linear):
                x = x.reshape(-1, module.in_features)  # one row per input vector
            elif x.dim() == 3:
                x = x.unsqueeze(0)  # an unbatched image
            dense = fan_out_count(module, torch.ones_like(x[:1])).item()
            spiking = not self.analog and is_binary(x)
            rec = self.ops.setdefault(name, {"layer": name, "type": type(module).__name__, "ac": 0.0,
                                             "mac": 0.0, "synapses_per_row": dense, "rows": 0,
                                             "input_spikes": 0.0,
                                             "input_elements": 0, "spike_input": spiking})
            rec["spike_input"] = rec["spike_input"] and spiking
            rec["rows"] += x.shape[0]
            rec["input_elements"] += x.numel()
            if spiking:
                rec["ac"] += fan_out_count(module, x).sum().item()
                rec["input_spikes"] += x.double().sum().item()
            else:
                rec["mac"] += dense * x.shape[0]
        return hook

    def _spike_hook(self, name: str) -> Callable:
        def hook(module, inputs, output):
            s = output.detach()
            rec = self.spikes.setdefault(name, {"layer": name, "type": type(module).__name__, "spikes": 0.0,
                                                "elements": 0, "steps": s.shape[0],
                                                "neurons": s[0, 0].numel()})
            rec["spikes"] += s.double().sum().item()
            rec["elements"] += s.numel()
        return hook

    def layers(self) -> List[Dict]:
        return [dict(r) for r in self.ops.values()]

    def neurons(self) -> List[Dict]:
        return [{**r, "firing_rate": r["spikes"] / max(r["elements"], 1)} for r in self.spikes.values()]


def per_image(counter: OpCounter, num_images: int, e_ac: float = E_AC_PJ, e_mac: float = E_MAC_PJ) -> Dict:
    """Per-image ACs, MACs, energy (pJ) per layer and in total, plus per-layer firing rates."""
    layers = []
    for r in counter.layers():
        layers.append({"layer": r["layer"], "type": r["type"], "op": "AC" if r["spike_input"] else "MAC",
                       "ac_per_image": r["ac"] / num_images, "mac_per_image": r["mac"] / num_images,
                       "synapses_per_step": r["synapses_per_row"],
                       "input_rate": r["input_spikes"] / r["input_elements"] if r["spike_input"] else None,
                       "energy_pj_per_image": (r["ac"] * e_ac + r["mac"] * e_mac) / num_images})
    neurons = [{"layer": r["layer"], "type": r["type"], "neurons": r["neurons"], "steps": r["steps"],
                "firing_rate": r["firing_rate"], "spikes_per_image": r["spikes"] / num_images}
               for r in counter.neurons()]
    ac = sum(r["ac_per_image"] for r in layers)
    mac = sum(r["mac_per_image"] for r in layers)
    return {"layers": layers, "neurons": neurons, "ac_per_image": ac, "mac_per_image": mac,
            "sop_per_image": ac, "energy_pj_per_image": ac * e_ac + mac * e_mac}


def dense_macs_per_image(layers: List[Dict]) -> float:
    """MACs of an ANN with the same weight layers, each run once per image: sum of synapses per step."""
    return float(sum(r["synapses_per_step"] for r in layers))
