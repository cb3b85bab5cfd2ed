"""Training-loop pieces shared by every stage: the learning-rate schedule, autocast, a loss guard
and batched prediction. (The PEFT training engine builds on these.)"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable

import torch

from lptlib.utils import progress


def cosine_lr(step: int, total_steps: int, warmup_steps: int, peak_lr: float, min_lr: float = 0.0) -> float:
    """Linear warm-up from 0 to `peak_lr` over `warmup_steps`, then half-cosine decay to `min_lr`."""
    if warmup_steps > 0 and step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress_ = min(1.0, (step - warmup_steps) / span)
    return min_lr + 0.5 * (peak_lr - min_lr) * (1.0 + math.cos(math.pi * progress_))


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; float32 (no autocast) on CPU."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class NonFiniteLossError(FloatingPointError):
    pass


def check_finite(loss: torch.Tensor, epoch: int, step: int) -> None:
    """Stop the run at once on a NaN/inf loss, naming where it happened."""
    if not torch.isfinite(loss).all():
        raise NonFiniteLossError(f"non-finite loss {loss.item()} at epoch {epoch}, step {step}; lower the learning "
                                 "rate or check the inputs (the last checkpoint is kept)")


@torch.no_grad()
def predict(fn: Callable[[torch.Tensor], torch.Tensor], batches: Iterable, device: torch.device,
            desc: str = "predict") -> tuple[torch.Tensor, torch.Tensor]:
    """Apply `fn` to every image batch; return (stacked float32 outputs on CPU, labels)."""
    outputs, labels = [], []
    for x, y in progress(batches, desc=desc):
        with autocast(device):
            out = fn(x.to(device, non_blocking=True))
        outputs.append(out.float().cpu())
        labels.append(y)
    return torch.cat(outputs), torch.cat(labels)
