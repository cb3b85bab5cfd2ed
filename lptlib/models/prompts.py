"""VPT-deep prompts (Jia et al. 2022; LPT eq. 1): l_p fresh learnable tokens P_i for every block i,
their outputs discarded. How a block runs with them (the `kv` and `concat` forms) is in
`lptlib.models.blocks`."""

from __future__ import annotations

import math

import torch
from torch import nn


def vpt_uniform_(tensor: torch.Tensor, patch_size: int) -> torch.Tensor:
    """VPT's Xavier-uniform prompt initialisation: U(-b, b), b = sqrt(6 / (3 * patch^2 + dim))."""
    bound = math.sqrt(6.0 / float(3 * patch_size * patch_size + tensor.shape[-1]))
    return nn.init.uniform_(tensor, -bound, bound)


class DeepPrompts(nn.Module):
    """VPT-deep prompts: `length` learnable tokens for each of `depth` blocks, shape (depth, length, dim).

    Initialised Xavier-uniform with VPT's bound sqrt(6 / (3 * patch^2 + dim)).
    """

    def __init__(self, depth: int, length: int, dim: int, patch_size: int = 16):
        super().__init__()
        if length < 0:
            raise ValueError(f"prompt length must be >= 0, got {length}")
        self.depth, self.length, self.dim = depth, length, dim
        self.prompts = nn.Parameter(vpt_uniform_(torch.empty(depth, length, dim), patch_size))

    def forward(self, batch_size: int) -> list[torch.Tensor | None]:
        """Per block, the prompts expanded to (batch_size, length, dim); None everywhere when length is 0."""
        if self.length == 0:
            return [None] * self.depth
        return [p.unsqueeze(0).expand(batch_size, -1, -1) for p in self.prompts]
