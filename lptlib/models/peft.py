"""A frozen backbone plus one trainable module (`tuner`): VPT-deep prompts and a head.

Every trainable tensor lives in `model.tuner`, so the optimizer takes `tuner.parameters()`, the
parameter count is `count_trainable(model)` and a checkpoint is `tuner.state_dict()` (LIFT's design).
With prompt length 0 it is linear probing (the backbone runs without gradients).
"""

from __future__ import annotations

import torch
from torch import nn

from lptlib.models.backbones import Backbone
from lptlib.models.heads import build_head
from lptlib.models.prompts import DeepPrompts, run_blocks


class PromptedClassifier(nn.Module):
    """Backbone (frozen, eval) -> VPT-deep prompted blocks -> final norm -> dropout -> head."""

    def __init__(self, backbone: Backbone, num_classes: int, prompt_length: int = 10, prompt_form: str = "kv",
                 head: str = "linear", cosine_scale: float = 20.0, head_dropout: float = 0.0):
        super().__init__()
        self.backbone = backbone
        self.prompt_form = prompt_form
        self.tuner = nn.ModuleDict({
            "prompts": DeepPrompts(backbone.depth, prompt_length, backbone.embed_dim, backbone.patch_size),
            "head": build_head(head, backbone.embed_dim, num_classes, cosine_scale),
        })
        self.dropout = nn.Dropout(head_dropout)

    @property
    def prompt_length(self) -> int:
        return self.tuner["prompts"].length

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """{'cls', 'patch'} after the final norm, with the prompts in every block."""
        b = self.backbone
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.prompt_length > 0):
            tokens = run_blocks(b.blocks, b.embed(x), self.tuner["prompts"](x.shape[0]), self.prompt_form)
            tokens = b.final_norm(tokens)
        return {"cls": tokens[:, 0], "patch": tokens[:, b.num_prefix_tokens:]}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tuner["head"](self.dropout(self.forward_features(x)["cls"]))


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
