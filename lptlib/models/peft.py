"""PEFT modules and the classifier that carries them: a frozen backbone plus one trainable module (`tuner`).

- VPT-deep prompts (`lptlib.models.prompts`);
- **AdaptFormer** (Chen et al. 2022, LIFT's default): parallel to each block's MLP,
  h <- h + MLP(LN2 h) + s * up(ReLU(down(LN_a h))), own LayerNorm, learnable scale s (init 1), up-projection
  and biases zero-initialised, bottleneck max(1, 2^floor(log2(C / 24))) (LIFT's rule, 32 for ViT-B);
- **LoRA** (Hu et al. 2022) on the query and value projections: W + (1 / r) B A, A Kaiming-uniform, B zero
  (LIFT's scaling 1 / r).

Each starts as the identity, so the tuned encoder equals the frozen one at initialisation (tests/test_peft.py).
Every trainable tensor lives in `model.tuner`, so the optimizer takes `tuner.parameters()`, the parameter
count is `count_trainable(model)` and a checkpoint is `tuner.state_dict()` (LIFT's design).
With no PEFT module it is linear probing (the backbone runs without gradients).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lptlib.models.backbones import Backbone
from lptlib.models.blocks import qkv_width, run_blocks
from lptlib.models.heads import build_head
from lptlib.models.prompts import DeepPrompts


def adapter_bottleneck(width: int) -> int:
    """AdaptFormer's default bottleneck for model width C: max(1, 2^floor(log2(C / 24)))."""
    return max(1, 2 ** math.floor(math.log2(width / 24))) if width >= 24 else 1


class AdaptFormer(nn.Module):
    """s * up(ReLU(down(LN(h)))), added to a block's MLP branch; zero output at initialisation."""

    def __init__(self, dim: int, bottleneck: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        self.scale = nn.Parameter(torch.ones(()))
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.scale * self.up(torch.relu(self.down(self.norm(h))))


class LoRA(nn.Module):
    """Low-rank updates of the query and value projections of one block: delta W_q = B_q A_q / r,
    delta W_v = B_v A_v / r; `delta()` is the (3C, C) update of the fused qkv weight."""

    def __init__(self, dim: int, rank: int):
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        self.rank = rank
        self.a = nn.Parameter(torch.empty(2, rank, dim))  # A_q, A_v
        self.b = nn.Parameter(torch.zeros(2, dim, rank))  # B_q, B_v
        for a in self.a:
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))

    def delta(self) -> torch.Tensor:
        dq, dv = (self.b @ self.a) / self.rank
        return torch.cat([dq, torch.zeros_like(dq), dv])


class PEFTClassifier(nn.Module):
    """Backbone (frozen, eval) -> blocks with prompts / adapters / LoRA -> final norm -> dropout -> head."""

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        prompt_length: int = 0,
        prompt_form: str = "kv",
        adapter: bool = False,
        bottleneck: int | None = None,
        lora_rank: int = 0,
        head: str = "linear",
        cosine_scale: float = 20.0,
        head_dropout: float = 0.0,
    ):
        super().__init__()
        self.backbone = backbone
        self.prompt_form = prompt_form
        depth, dim = backbone.depth, backbone.embed_dim
        tuner = {"prompts": DeepPrompts(depth, prompt_length, dim, backbone.patch_size)}
        if adapter:
            width = bottleneck or adapter_bottleneck(dim)
            tuner["adapters"] = nn.ModuleList(AdaptFormer(dim, width) for _ in range(depth))
        if lora_rank:
            tuner["lora"] = nn.ModuleList(LoRA(qkv_width(block), lora_rank) for block in backbone.blocks)
        tuner["head"] = build_head(head, dim, num_classes, cosine_scale)
        self.tuner = nn.ModuleDict(tuner)
        self.dropout = nn.Dropout(head_dropout)

    @property
    def prompt_length(self) -> int:
        return self.tuner["prompts"].length

    @property
    def tunes_backbone(self) -> bool:
        """Whether any PEFT module changes the encoder (False: linear probing)."""
        return self.prompt_length > 0 or "adapters" in self.tuner or "lora" in self.tuner

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """{'cls', 'patch'} after the final norm, with every PEFT module in place."""
        b = self.backbone
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.tunes_backbone):
            tokens = run_blocks(
                b.blocks,
                b.embed(x),
                self.tuner["prompts"](x.shape[0]),
                self.prompt_form,
                adapters=self.tuner["adapters"] if "adapters" in self.tuner else None,
                loras=self.tuner["lora"] if "lora" in self.tuner else None,
            )
            tokens = b.final_norm(tokens)
        return {"cls": tokens[:, 0], "patch": tokens[:, b.num_prefix_tokens :]}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tuner["head"](self.dropout(self.forward_features(x)["cls"]))


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
