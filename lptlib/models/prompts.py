"""VPT-deep prompts (Jia et al. 2022; LPT eq. 1): l_p fresh learnable tokens P_i for every block i,
their outputs discarded; and LPT's group prompt pool (keys + prompts, a query picks the top-k). How a block runs with them (the `kv` and `concat` forms) is in
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


class GroupPromptPool(nn.Module):
    """m keys (m, D) and their prompts (m, L - K, l_p, D); a query picks the top-k keys by cosine."""

    def __init__(self, pool_size: int, depth: int, length: int, dim: int, top_k: int, patch_size: int = 16):
        super().__init__()
        if not 1 <= top_k <= pool_size:
            raise ValueError(f"lpt.top_k must be between 1 and lpt.pool_size ({pool_size}), got {top_k}")
        self.top_k = top_k
        self.keys = nn.Parameter(torch.empty(pool_size, dim).uniform_(-1.0, 1.0))
        self.prompts = nn.Parameter(vpt_uniform_(torch.empty(pool_size, depth, length, dim), patch_size))

    @property
    def pool_size(self) -> int:
        return self.keys.shape[0]

    def select(self, query: torch.Tensor) -> torch.Tensor:
        """(B, k) indices of the keys most similar (cosine) to each query."""
        sim = nn.functional.normalize(query, dim=-1) @ nn.functional.normalize(self.keys, dim=-1).T
        return sim.topk(self.top_k, dim=1).indices

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """The group prompts of each sample: the mean of its picks, (B, L - K, l_p, D).

        Computed as (one-hot picks averaged over k) @ prompts: the same values as `prompts[idx].mean(1)`, but its
        backward is a matmul, which is deterministic on a multi-threaded CPU (index accumulation is not)."""
        weights = nn.functional.one_hot(idx, self.pool_size).to(self.prompts.dtype).mean(dim=1)  # (B, m)
        return (weights @ self.prompts.flatten(1)).view(len(idx), *self.prompts.shape[1:])
