"""A whole training step captured as one CUDA graph and replayed (opt-in; static shapes only).

A step at batch 256 launches hundreds of small kernels (ten LIF layers, tdBN, convolutions, AdamW), so on
a fast GPU the launch gaps cost as much as the work. `CapturedStep` records forward, backward and the
optimizer step once and replays them; each call copies the batch into the graph's static input.
Requirements: CUDA, a batch shape that never changes (drop_last), an optimizer built with
``capturable=True``, and random draws from the default CUDA generator (``generator=None``), whose state
torch advances per replay exactly as in eager mode.
"""
from __future__ import annotations

from typing import Callable

import torch

__all__ = ["CapturedStep"]


class CapturedStep:
    """``step = CapturedStep(loss_fn, optimizer, example)``; ``loss = step(x)`` runs one captured step.

    ``loss_fn(x)`` returns the scalar loss of batch ``x`` (forward only). Warm-up steps (on a side
    stream, as graph capture requires) change the model, so pass ``restore=True`` to put the parameters,
    buffers and optimizer state back afterwards, in place: the captured graph then continues from the
    same state as an eager run would.
    """

    def __init__(self, loss_fn: Callable[[torch.Tensor], torch.Tensor], optimizer: torch.optim.Optimizer,
                 example: torch.Tensor, *, model: torch.nn.Module, warmup: int = 3, restore: bool = True):
        if not example.is_cuda:
            raise ValueError("CapturedStep needs CUDA tensors (torch.cuda graphs); run the eager step on CPU")
        self.static_x = example.detach().clone()
        saved = _snapshot(model, optimizer) if restore else None
        side = torch.cuda.Stream(example.device)
        side.wait_stream(torch.cuda.current_stream(example.device))
        with torch.cuda.stream(side):
            for _ in range(max(1, warmup)):
                self._eager(loss_fn, optimizer)
        torch.cuda.current_stream(example.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        optimizer.zero_grad(set_to_none=True)
        with torch.cuda.graph(self.graph):
            self.static_loss = self._eager(loss_fn, optimizer)
        if saved is not None:
            _restore(model, optimizer, saved)

    def _eager(self, loss_fn, optimizer) -> torch.Tensor:
        optimizer.zero_grad(set_to_none=False)
        loss = loss_fn(self.static_x)
        loss.backward()
        optimizer.step()
        return loss

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape != self.static_x.shape:
            raise ValueError(f"a captured step takes batches of shape {tuple(self.static_x.shape)}, got "
                             f"{tuple(x.shape)}; use drop_last so every batch has the same size")
        self.static_x.copy_(x)
        self.graph.replay()
        return self.static_loss


def _tensors(model: torch.nn.Module, optimizer: torch.optim.Optimizer):
    """Every tensor a step changes: parameters, buffers and the optimizer's per-parameter state."""
    out = list(model.parameters()) + list(model.buffers())
    for state in optimizer.state.values():
        out += [v for v in state.values() if isinstance(v, torch.Tensor)]
    return out


def _snapshot(model, optimizer):
    optimizer_state_keys = {id(p): list(s) for p, s in optimizer.state.items()}
    return optimizer_state_keys, [t.detach().clone() for t in _tensors(model, optimizer)]


def _restore(model, optimizer, saved) -> None:
    keys, values = saved
    if keys:  # state that existed before warm-up: copy back in place (the graph holds these addresses)
        for t, v in zip(_tensors(model, optimizer), values):
            t.data.copy_(v)
        return
    with torch.no_grad():  # fresh optimizer: parameters and buffers back, optimizer state back to zero
        n = len(list(model.parameters())) + len(list(model.buffers()))
        for t, v in zip(_tensors(model, optimizer)[:n], values[:n]):
            t.copy_(v)
        for state in optimizer.state.values():
            for v in state.values():
                if isinstance(v, torch.Tensor):
                    v.zero_()
