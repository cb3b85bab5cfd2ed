"""LPT: long-tailed prompt tuning (Dong et al., ICLR 2023; docs/methods.md#lpt).

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

import torch
from torch import nn

from lptlib.models.backbones import Backbone
from lptlib.models.blocks import run_blocks
from lptlib.models.heads import CosineHead
from lptlib.models.peft import AdaptFormer, adapter_bottleneck
from lptlib.models.prompts import DeepPrompts, vpt_uniform_


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


class LPT(nn.Module):
    """Frozen backbone + LPT's shared prompts, cosine head and (stage 2) group prompt pool."""

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        stage: int = 1,
        prompt_length: int = 10,
        prompt_form: str = "kv",
        pool_size: int = 20,
        top_k: int = 2,
        share_blocks: int = 6,
        cosine_scale: float = 20.0,
        head_dropout: float = 0.1,
        adapter: bool = False,
        bottleneck: int | None = None,
    ):
        super().__init__()
        if stage not in (1, 2):
            raise ValueError(f"LPT has stages 1 and 2, got {stage}")
        depth = backbone.depth
        if not 0 <= share_blocks < depth:
            raise ValueError(
                f"lpt.share_blocks (K) must be in [0, {depth - 1}] for a {depth}-block backbone, got {share_blocks}"
            )
        self.backbone, self.stage, self.prompt_form, self.share_blocks = backbone, stage, prompt_form, share_blocks
        self.tuner = nn.ModuleDict(
            {
                "shared_prompts": DeepPrompts(depth, prompt_length, backbone.embed_dim, backbone.patch_size),
                "head": CosineHead(backbone.embed_dim, num_classes, cosine_scale),
            }
        )
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
        return self.tuner["head"].cosine(self.dropout(cls))

    def forward_train(self, x: torch.Tensor, reuse: bool | None = None) -> dict[str, torch.Tensor]:
        """{'cosine': (B, C)} and, in stage 2, {'query': (B, D), 'topk': (B, k)} for the matching term.

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
        """Logits s * cos(f, w) for prediction (argmax)."""
        return self.tuner["head"].scale * self.forward_train(x)["cosine"]
