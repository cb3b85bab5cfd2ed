"""VPT-deep prompts (Jia et al. 2022; LPT eq. 1) on timm and open_clip ViT blocks.

Block i sees l_p fresh learnable tokens P_i; their outputs are discarded. Two equivalent forms:

- `concat`: run the block on [CLS, patches, P_i] and keep the first 1 + N outputs (VPT, LPT's code);
- `kv` (default): LPT's eq. 1, q = [c, z] and k = v = [c, z, P_i]. Prompts go through the block's
  first LayerNorm and enter only the keys and values; the query rows and the MLP of the prompt tokens,
  which `concat` computes and throws away, are skipped.

Both give the same CLS and patch outputs (tests/test_prompts.py proves it at float32 tolerance). The
`kv` form restates the block's two residual lines around its own submodules (norm1/ln_1, the
attention's projections, layer scale, drop path, MLP); it is defined for timm's `Block` + `Attention`
and open_clip's `ResidualAttentionBlock`, and other block types raise (use `concat` there).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers import Attention as TimmAttention
from timm.models.vision_transformer import Block as TimmBlock
from torch import nn

from lptlib.config import PROMPT_FORMS


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


def _timm_kv_attention(attn: TimmAttention, h: torch.Tensor, h_kv: torch.Tensor) -> torch.Tensor:
    """timm `Attention` with queries from `h` (B, N, C) and keys/values from `h_kv` (B, N + L, C)."""
    B, N, _ = h.shape
    M = h_kv.shape[1]
    gate = attn.gate(h).sigmoid() if attn.gate is not None else None
    qkv = attn.qkv(h_kv).reshape(B, M, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q[:, :, :N]), attn.k_norm(k)
    x = F.scaled_dot_product_attention(q, k, v, dropout_p=attn.attn_drop.p if attn.training else 0.0)
    x = attn.norm(x.transpose(1, 2).reshape(B, N, attn.attn_dim))
    if gate is not None:
        x = x * gate
    return attn.proj_drop(attn.proj(x))


def _kv_block(block: nn.Module, x: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
    n = x.shape[1]
    if type(block) is TimmBlock and type(block.attn) is TimmAttention:
        h_kv = block.norm1(torch.cat([x, prompts], dim=1))
        x = x + block.drop_path1(block.ls1(_timm_kv_attention(block.attn, h_kv[:, :n], h_kv)))
        return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
    if type(block).__name__ == "ResidualAttentionBlock" and not hasattr(block, "ln_1_kv"):  # open_clip
        h_kv = block.ln_1(torch.cat([x, prompts], dim=1))
        x = x + block.ls_1(block.attention(q_x=h_kv[:, :n], k_x=h_kv, v_x=h_kv))
        return x + block.ls_2(block.mlp(block.ln_2(x)))
    raise NotImplementedError(f"the kv prompt form is not defined for {type(block).__name__}; use prompt_form: concat")


def prompted_block(block: nn.Module, x: torch.Tensor, prompts: torch.Tensor | None, form: str = "kv") -> torch.Tensor:
    """One block with prompt tokens (B, L, D) in the given form; without prompts, the plain block."""
    if prompts is None or prompts.shape[1] == 0:
        return block(x)
    if form == "concat":
        return block(torch.cat([x, prompts], dim=1))[:, :x.shape[1]]
    if form == "kv":
        return _kv_block(block, x, prompts)
    raise ValueError(f"unknown prompt form {form!r}; use one of {', '.join(PROMPT_FORMS)}")


def run_blocks(blocks: Sequence[nn.Module], tokens: torch.Tensor, prompts: Sequence[torch.Tensor | None],
               form: str = "kv", start: int = 0) -> torch.Tensor:
    """Run blocks[start:] on `tokens`, block start + j getting prompts[j] (None: no prompts)."""
    for j, block in enumerate(list(blocks)[start:]):
        tokens = prompted_block(block, tokens, prompts[j] if j < len(prompts) else None, form)
    return tokens
