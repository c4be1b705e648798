"""An exponential moving average (EMA) of a model's weights, as timm's `ModelEmaV2/V3` and mmdet's
`ExpMomentumEMA` keep one: `pvtkit train --ema`.

After every optimizer step each floating-point parameter's average moves towards it,
`ema = d * ema + (1 - d) * weight`, with the decay warmed up by TensorFlow's `ExponentialMovingAverage(num_updates)`
rule, `d = min(decay, (1 + t) / (10 + t))` at update `t` (0, 1, ...): early averages forget the starting weights
(a fresh head's random ones) within tens of steps instead of the ~1/(1 - decay) a constant 0.9999 would take.
Buffers (BatchNorm statistics) are not averaged: the model's own are used with the averaged weights, as timm's
`exclude_buffers` and mmseg's EMA hooks do. The averages are fp32 tensors on the model's device; under torchrun
every process updates its own copy from the same synchronised weights, so they agree without communication.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


class WeightEma:
    """The EMA of `model`'s floating-point parameters, starting from their current values.

    Args:
        model: The model being trained (not a DDP wrapper: its parameter names are the state dict's).
        decay: The decay per update once warmed up, in (0, 1).
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        named = [(n, p) for n, p in model.named_parameters() if p.is_floating_point()]
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.averages = [p.detach().float().clone() for p in self.params]

    def decay_at(self, updates: int) -> float:
        """The decay of update number `updates` (0 for the first): warmed up, at most `decay`."""
        return min(self.decay, (1 + updates) / (10 + updates))

    @torch.no_grad()
    def update(self, updates: int) -> None:
        """Move the averages towards the current weights; `updates` is how many updates came before this one (the
        optimizer steps done before the one just taken), so a resumed run continues the same sequence of decays."""
        weight = 1.0 - self.decay_at(updates)
        torch._foreach_lerp_(self.averages, [p.detach().float() for p in self.params], weight)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averages by parameter name (for a checkpoint)."""
        return dict(zip(self.names, self.averages))

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore the averages of `state_dict()`; the names must be the model's."""
        if sorted(state) != sorted(self.names):
            missing = sorted(set(self.names) - set(state))[:3]
            extra = sorted(set(state) - set(self.names))[:3]
            raise ValueError(f"the checkpoint's EMA does not fit the model (missing {missing}, unexpected {extra})")
        for name, average in zip(self.names, self.averages):
            if state[name].shape != average.shape:
                raise ValueError(
                    f"the checkpoint's EMA of {name} has shape {tuple(state[name].shape)}, the model's "
                    f"{tuple(average.shape)}"
                )
            average.copy_(state[name])

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """Within the block the model holds the averaged weights (to validate or save them); its own are put back
        afterwards, bit for bit."""
        with torch.no_grad():
            kept = [p.detach().clone() for p in self.params]
            torch._foreach_copy_(self.params, self.averages)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(self.params, kept)
