"""Dropout that is cheaper on CPU: on CPU tensors the mask comes from `rand_like` (about 2x faster than
nn.Dropout's Bernoulli sampler, which was a third of the MSA encoder's CPU training time, at the price of
a float instead of a bool mask kept for backward); on GPUs it is plain `F.dropout` (fused, bool mask)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FastDropout(nn.Module):
    """Inverted dropout: zero each element with probability p, scale the rest by 1 / (1 - p), in training only."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, training=True)
        scaled_keep = torch.rand_like(x).ge_(self.p).mul_(1.0 / (1.0 - self.p))  # in place: one temporary
        return x * scaled_keep

    def extra_repr(self) -> str:
        return f"p={self.p}"
