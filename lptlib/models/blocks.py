"""One block runner for every PEFT method, on timm and open_clip ViT blocks (docs/methods.md#backbones-and-peft-modules).

`tuned_block(block, x, prompts, form, adapter, lora)` runs one frozen block with any mix of

- **VPT-deep prompts** P_i (B, L, D), in one of two forms that give the same CLS and patch outputs:
  `concat` runs the block on [CLS, patches, P_i] and keeps the first 1 + N outputs (VPT, LPT's code);
  `kv` (default) is LPT's eq. 1, q = [c, z] and k = v = [c, z, P_i]: prompts go through the block's first
  LayerNorm and enter only keys and values, skipping the query rows and MLP work `concat` throws away;
- an **AdaptFormer** adapter, parallel to the MLP on the residual stream after attention:
  h <- h + MLP(LN2 h) + adapter(h);
- **LoRA** on the query and value projections: W_qkv + [B_q A_q; 0; B_v A_v] * scaling.

With none of them it is the plain `block(x)`. Otherwise the block's two residual lines are restated around
its own submodules (norm1/ln_1, the attention's projections, layer scale, drop path, norm2/ln_2, MLP); nothing
of timm or open_clip is copied or patched, so the frozen backbone's state dict is untouched. Defined for timm's
`Block` + `Attention` and open_clip's `ResidualAttentionBlock` (nn.MultiheadAttention, batch first); other block
types raise, except plain concat-form prompts, which only call the block. Tests prove each form against
`block(x)` / the concat form at float32 tolerance (tests/test_prompts.py, tests/test_peft.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from timm.layers import Attention as TimmAttention
from timm.models.vision_transformer import Block as TimmBlock
from torch import nn

PROMPT_FORMS = ("kv", "concat")
PromptForm = Literal["kv", "concat"]


def _heads(t: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, N, C) -> (B, H, N, C / H)."""
    B, N, C = t.shape
    return t.reshape(B, N, num_heads, C // num_heads).transpose(1, 2)


def _split_qkv(weight: torch.Tensor, bias: torch.Tensor | None, delta: torch.Tensor | None):
    """(W_q, b_q), (W_kv, b_kv) of a fused (3C, C) projection, with an optional LoRA weight delta."""
    if delta is not None:
        weight = weight + delta.to(weight.dtype)
    c = weight.shape[0] // 3
    bq, bkv = (None, None) if bias is None else (bias[:c], bias[c:])
    return (weight[:c], bq), (weight[c:], bkv)


def _timm_attention(
    attn: TimmAttention, h: torch.Tensor, h_kv: torch.Tensor, delta: torch.Tensor | None
) -> torch.Tensor:
    """timm `Attention` with queries from `h` (B, N, C) and keys/values from `h_kv` (B, M, C)."""
    B, N, _ = h.shape
    (wq, bq), (wkv, bkv) = _split_qkv(attn.qkv.weight, attn.qkv.bias, delta)
    q = attn.q_norm(_heads(F.linear(h, wq, bq), attn.num_heads))
    k, v = F.linear(h_kv, wkv, bkv).chunk(2, dim=-1)
    k, v = attn.k_norm(_heads(k, attn.num_heads)), _heads(v, attn.num_heads)
    x = F.scaled_dot_product_attention(q, k, v, dropout_p=attn.attn_drop.p if attn.training else 0.0, scale=attn.scale)
    x = attn.norm(x.transpose(1, 2).reshape(B, N, -1))
    if attn.gate is not None:
        x = x * attn.gate(h).sigmoid()
    return attn.proj_drop(attn.proj(x))


def _mha_attention(
    mha: nn.MultiheadAttention, h: torch.Tensor, h_kv: torch.Tensor, delta: torch.Tensor | None
) -> torch.Tensor:
    """`nn.MultiheadAttention` (batch first, fused in-projection) with queries from `h`, keys/values from `h_kv`."""
    B, N, C = h.shape
    (wq, bq), (wkv, bkv) = _split_qkv(mha.in_proj_weight, mha.in_proj_bias, delta)
    q = _heads(F.linear(h, wq, bq), mha.num_heads)
    k, v = F.linear(h_kv, wkv, bkv).chunk(2, dim=-1)
    x = F.scaled_dot_product_attention(
        q, _heads(k, mha.num_heads), _heads(v, mha.num_heads), dropout_p=mha.dropout if mha.training else 0.0
    )
    return mha.out_proj(x.transpose(1, 2).reshape(B, N, C))


def _is_timm_block(block: nn.Module) -> bool:
    return type(block) is TimmBlock and type(block.attn) is TimmAttention


def _is_clip_block(block: nn.Module) -> bool:
    return (
        type(block).__name__ == "ResidualAttentionBlock"
        and not hasattr(block, "ln_1_kv")
        and isinstance(getattr(block, "attn", None), nn.MultiheadAttention)
        and block.attn.batch_first
        and block.attn._qkv_same_embed_dim
        and block.attn.bias_k is None
    )


def qkv_width(block: nn.Module) -> int:
    """The model width C of a supported block (LoRA's input and output size)."""
    if _is_timm_block(block):
        return block.attn.qkv.in_features
    if _is_clip_block(block):
        return block.attn.embed_dim
    raise NotImplementedError(f"LoRA and adapters are not defined for {type(block).__name__} blocks")


def tuned_block(
    block: nn.Module,
    x: torch.Tensor,
    prompts: torch.Tensor | None = None,
    form: str = "kv",
    adapter: nn.Module | None = None,
    lora: nn.Module | None = None,
) -> torch.Tensor:
    """One frozen block with optional prompts (B, L, D) in `form`, an adapter and LoRA (see module doc)."""
    if form not in PROMPT_FORMS:
        raise ValueError(f"unknown prompt form {form!r}; use one of {', '.join(PROMPT_FORMS)}")
    if prompts is not None and prompts.shape[1] == 0:
        prompts = None
    if prompts is None and adapter is None and lora is None:
        return block(x)
    n = x.shape[1]
    if prompts is not None and form == "concat":
        return tuned_block(block, torch.cat([x, prompts], dim=1), adapter=adapter, lora=lora)[:, :n]
    delta = lora.delta() if lora is not None else None
    if _is_timm_block(block):
        h_kv = block.norm1(x if prompts is None else torch.cat([x, prompts], dim=1))
        x = x + block.drop_path1(block.ls1(_timm_attention(block.attn, h_kv[:, :n], h_kv, delta)))
        out = x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
    elif _is_clip_block(block):
        h_kv = block.ln_1(x if prompts is None else torch.cat([x, prompts], dim=1))
        x = x + block.ls_1(_mha_attention(block.attn, h_kv[:, :n], h_kv, delta))
        out = x + block.ls_2(block.mlp(block.ln_2(x)))
    else:
        what = "the kv prompt form" if prompts is not None else "adapters and LoRA"
        raise NotImplementedError(
            f"{what} is not defined for {type(block).__name__} blocks"
            + ("; use prompt_form: concat" if prompts is not None else "")
        )
    return out if adapter is None else out + adapter(x)


def run_blocks(
    blocks: Sequence[nn.Module],
    tokens: torch.Tensor,
    prompts: Sequence[torch.Tensor | None] | None = None,
    form: str = "kv",
    adapters: Sequence[nn.Module | None] | None = None,
    loras: Sequence[nn.Module | None] | None = None,
) -> torch.Tensor:
    """Run `blocks` in order on `tokens`; block j gets prompts[j], adapters[j] and loras[j] (each list aligned
    with `blocks`, None or missing: nothing of that kind)."""

    def pick(items, j):
        return items[j] if items is not None and j < len(items) else None

    for j, block in enumerate(blocks):
        tokens = tuned_block(block, tokens, pick(prompts, j), form, pick(adapters, j), pick(loras, j))
    return tokens
