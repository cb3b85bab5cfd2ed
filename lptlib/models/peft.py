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

**LPT** (`LPT`): long-tailed prompt tuning (Dong et al., ICLR 2023; docs/methods.md#lpt).

- Stage 1: *shared prompts* u_1..u_L (VPT-deep) in all L blocks + a cosine head with dropout 0.1 before it.
- LPT++ (our reading of its abstract) adds AdaptFormer adapters to every block (`adapter=True`): they train
  with the shared prompts in stage 1 and are frozen in stage 2. LPT is this code with adapters off.
- Stage 2: a *group prompt pool* of m entries, each a key k_j in R^D and prompts r^j for blocks K+1..L.
  The *query* q(x) is the stage-1 CLS output (shared prompts frozen); the top-k keys by cosine are
  picked and their prompts averaged; blocks 1..K use u_i only, blocks K+1..L use [u_i ; r_{i-K}].
  Shared prompts are frozen; the pool, its keys and the head train.

**Block-K reuse**: blocks 1..K of the prompted pass see exactly the inputs of the query pass (frozen
shared prompts, no dropout or drop path in the frozen backbone), so the prompted pass starts from the
query pass's block-K tokens instead of recomputing them (`reuse=False` runs the official design's two full
passes; a test proves both give the same outputs). All trainable tensors live in `model.tuner`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lptlib.models.backbones import Backbone
from lptlib.models.blocks import qkv_width, run_blocks
from lptlib.models.heads import build_head
from lptlib.models.prompts import DeepPrompts, GroupPromptPool


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


# ------------------------------------------------------------------------------------------- LPT
class LPT(nn.Module):
    """Frozen backbone + LPT's shared prompts, cosine head and (stage 2) group prompt pool.

    `head="linear"` (an ablation: LPT without its cosine head) puts a linear head in its place; its normalised
    score is z / s, so `forward_train`'s 'cosine' times s is the logit under either head and every loss that
    takes cosines (A-GCL) sees logits on the same scale (our reading: LPT has no linear-head variant)."""

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        stage: int = 1,
        prompt_length: int = 10,
        prompt_form: str = "kv",
        pool_size: int = 20,
        top_k: int = 2,
        share_blocks: int | None = None,
        cosine_scale: float = 20.0,
        head_dropout: float = 0.1,
        adapter: bool = False,
        bottleneck: int | None = None,
        head: str = "cosine",
    ):
        super().__init__()
        if stage not in (1, 2):
            raise ValueError(f"LPT has stages 1 and 2, got {stage}")
        depth = backbone.depth
        share_blocks = depth // 2 if share_blocks is None else share_blocks  # default: the first half (LPT: 6 of 12)
        if not 0 <= share_blocks < depth:
            raise ValueError(
                f"lpt.share_blocks (K) must be in [0, {depth - 1}] for a {depth}-block backbone, got {share_blocks}"
            )
        self.backbone, self.stage, self.prompt_form, self.share_blocks = backbone, stage, prompt_form, share_blocks
        self.tuner = nn.ModuleDict(
            {
                "shared_prompts": DeepPrompts(depth, prompt_length, backbone.embed_dim, backbone.patch_size),
                "head": build_head(head, backbone.embed_dim, num_classes, cosine_scale),
            }
        )
        self.head_kind, self.scale = head, cosine_scale
        if adapter:
            width = bottleneck or adapter_bottleneck(backbone.embed_dim)
            self.tuner["adapters"] = nn.ModuleList(AdaptFormer(backbone.embed_dim, width) for _ in range(depth))
        if stage == 2:
            self.tuner["group_pool"] = GroupPromptPool(
                pool_size, depth - share_blocks, prompt_length, backbone.embed_dim, top_k, backbone.patch_size
            )
            self.tuner["shared_prompts"].requires_grad_(False)
            if adapter:
                self.tuner["adapters"].requires_grad_(False)
        self.dropout = nn.Dropout(head_dropout)
        self.reuse_block_k = True  # False: the official design's two full passes (for tests and benchmarks)

    def stage1_state(self) -> dict[str, torch.Tensor]:
        """What stage 2 starts from: the shared prompts, the adapters (if any) and the head."""
        return {k: v for k, v in self.tuner.state_dict().items() if not k.startswith("group_pool.")}

    def load_stage1_state(self, state: dict[str, torch.Tensor], source: str = "stage-1 checkpoint") -> None:
        """Load stage 1's shared prompts and head, strictly: another backbone, prompt length or class count
        is an error naming the tensors."""
        expected = self.stage1_state()
        problems = [f"missing {k}" for k in expected if k not in state]
        problems += [f"unexpected {k}" for k in state if k not in expected]
        problems += [
            f"{k}: {tuple(state[k].shape)} vs this model's {tuple(v.shape)}"
            for k, v in expected.items()
            if k in state and state[k].shape != v.shape
        ]
        if problems:
            raise ValueError(
                f"{source} does not fit this LPT model (another backbone, prompt length, class "
                f"list, or adapters on in one and off in the other?): {'; '.join(problems)}"
            )
        self.tuner.load_state_dict({**self.tuner.state_dict(), **state})

    # ---------------------------------------------------------------------------------- forward
    def _head(self, cls: torch.Tensor) -> torch.Tensor:
        if self.head_kind == "linear":
            return self.tuner["head"](self.dropout(cls)) / self.scale
        return self.tuner["head"].cosine(self.dropout(cls))

    def forward_train(self, x: torch.Tensor, reuse: bool | None = None) -> dict[str, torch.Tensor]:
        """{'cosine': (B, C)} (the cosines, or z / s under a linear head) and, in stage 2, {'query': (B, D), 'topk': (B, k)} for the matching term.

        `reuse` (default: `self.reuse_block_k`) starts the prompted pass from the query pass's block-K tokens.
        """
        return {k: v for k, v in self.forward_all(x, reuse).items() if k != "features"}

    def forward_all(self, x: torch.Tensor, reuse: bool | None = None) -> dict[str, torch.Tensor]:
        """`forward_train`'s outputs plus 'features', the final CLS feature the head sees (before dropout)."""
        reuse = self.reuse_block_k if reuse is None else reuse
        b, form, k = self.backbone, self.prompt_form, self.share_blocks
        shared = self.tuner["shared_prompts"](x.shape[0])
        adapters = list(self.tuner["adapters"]) if "adapters" in self.tuner else [None] * len(b.blocks)
        if self.stage == 1:
            cls = b.final_norm(run_blocks(b.blocks, b.embed(x), shared, form, adapters))[:, 0]
            return {"cosine": self._head(cls), "features": cls}
        blocks = list(b.blocks)
        with torch.no_grad():  # nothing trainable before block K or in the query pass
            tokens_k = run_blocks(blocks[:k], b.embed(x), shared[:k], form, adapters[:k])
            query = b.final_norm(run_blocks(blocks[k:], tokens_k, shared[k:], form, adapters[k:]))[:, 0]
            if not reuse:  # the official design: the prompted pass recomputes blocks 1..K
                tokens_k = run_blocks(blocks[:k], b.embed(x), shared[:k], form, adapters[:k])
        pool = self.tuner["group_pool"]
        idx = pool.select(query)
        group = pool(idx)
        prompts = [torch.cat([shared[k + j], group[:, j]], dim=1) for j in range(len(blocks) - k)]
        cls = b.final_norm(run_blocks(blocks[k:], tokens_k, prompts, form, adapters[k:]))[:, 0]
        return {"cosine": self._head(cls), "query": query, "topk": idx, "features": cls}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits s * cos(f, w) for prediction (argmax); z under a linear head."""
        return self.scale * self.forward_train(x)["cosine"]


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
