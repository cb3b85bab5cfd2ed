"""The training engine shared by every stage: learning-rate schedule, autocast, a non-finite-loss guard,
batched prediction, evaluation by shot group, and `fit` (train / select on val / test once, with
per-epoch checkpoints and resume)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import os
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, SequentialSampler, Subset

from lptlib import dist
from lptlib.data.samplers import SingleSampling
from lptlib.metrics import shot_accuracy
from lptlib.utils import atomic_write_bytes, code_digest, default_device, progress


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
        raise NonFiniteLossError(
            f"non-finite loss {loss.item()} at epoch {epoch}, step {step}; lower the learning "
            "rate or check the inputs (the last checkpoint is kept)"
        )


def _rank_share(loader: DataLoader) -> DataLoader:
    """This rank's contiguous share of a sequential loader's dataset, same batch size and workers."""
    start, stop = dist.shard_bounds(len(loader.dataset))
    return DataLoader(
        Subset(loader.dataset, range(start, stop)),
        batch_size=loader.batch_size,
        num_workers=loader.num_workers,
        pin_memory=loader.pin_memory,
    )


@torch.no_grad()
def predict(
    fn: Callable[[torch.Tensor], torch.Tensor], batches: Iterable, device: torch.device, desc: str = "predict"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply `fn` to every image batch; return (stacked float32 outputs on CPU, labels).

    In a distributed run a sequential DataLoader is split across the ranks and the outputs are gathered in
    order, so every rank returns the full result."""
    sharded = (
        dist.world_size() > 1 and isinstance(batches, DataLoader) and isinstance(batches.sampler, SequentialSampler)
    )
    if sharded:
        batches = _rank_share(batches)
    outputs, labels = [], []
    for x, y in progress(batches, desc=desc):
        with autocast(device):
            out = fn(x.to(device, non_blocking=True))
        outputs.append(out.float().cpu())
        labels.append(y)
    out, lab = torch.cat(outputs), torch.cat(labels)
    if sharded:
        out, lab = dist.all_gather_cat(out), dist.all_gather_cat(lab)
    return out, lab


# ------------------------------------------------------------------------------- training engine
class CheckpointError(RuntimeError):
    """A checkpoint cannot be resumed from; the message says why."""


@dataclass
class FitResult:
    best_epoch: int  # 0-based epoch whose trainable state was selected on val (last epoch without val)
    val: dict | None  # val metrics of the selected state
    test: dict  # test metrics of the selected state, evaluated once
    test_predictions: torch.Tensor
    history: list[dict] = field(default_factory=list)  # per epoch: loss, lr, val accuracy
    resumed_from_epoch: int | None = None

    def row(self, trainable_params: int) -> dict:
        """A metrics-file row: test accuracy by shot group (with per-class and the confusion counts when
        stored), trainable parameters,
        the selected epoch and its val accuracy."""
        row = {
            k: self.test[k]
            for k in (
                "overall",
                "many",
                "medium",
                "few",
                "class_mean",
                "n_many",
                "n_medium",
                "n_few",
                "per_class",
                "confusion",
            )
            if k in self.test
        }
        row.update(trainable_params=trainable_params, best_epoch=self.best_epoch)
        if self.val is not None:
            row["val_overall"] = self.val["overall"]
        return row


def evaluate(
    model: nn.Module, loader, device: torch.device, shot_counts, convention: str = "decoupling", desc: str = "evaluate"
) -> tuple[dict, torch.Tensor]:
    """shot_accuracy of `model`'s argmax predictions on `loader`; returns (metrics, predictions)."""
    model.eval()
    logits, labels = predict(model, loader, device, desc=desc)
    preds = logits.argmax(1)
    return shot_accuracy(preds, labels, shot_counts, convention), preds


def _rng_state() -> dict:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def state_digest(module: nn.Module) -> str:
    """SHA-256 of a module's state (names, shapes, dtypes and values)."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def run_settings(cfg, data, **run) -> dict:
    """What identifies a run besides its code and its model's starting state: the full resolved config (minus the
    `resume` keys, so `resume: <path>` can continue a run), the data signature (split sizes, label and image
    digests) and the run's own keys (e.g. which Table-1 row)."""
    from lptlib.config import without_resume

    return {"config": without_resume(cfg), "data": data.signature(), **run}


def fingerprint(model: nn.Module, settings: dict) -> dict:
    """What a checkpoint must match to be resumed: the digest of the code (`lptlib` sources and notebooks), the
    run's settings (see `run_settings`), the schedule, the trainable tensors' shapes and the digest of the
    model's starting state (frozen backbone weights + initial trainable state, e.g. a loaded stage-1 state)."""
    return {
        "settings": {"code": code_digest(), **settings, "initial_state": state_digest(model)},
        "shapes": {k: list(v.shape) for k, v in model.tuner.state_dict().items()},
    }


def _differences(found, expected, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested mappings."""
    if isinstance(found, dict) and isinstance(expected, dict):
        return [
            d
            for k in sorted(set(found) | set(expected), key=str)
            for d in _differences(found.get(k), expected.get(k), f"{prefix}{k}.")
        ]
    return [] if found == expected else [prefix.rstrip(".")]


def load_checkpoint(path: str | os.PathLike, expected: dict) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"resume checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError ... on a damaged file
        raise CheckpointError(
            f"checkpoint {path} is damaged or not a training checkpoint of this project "
            f"({type(e).__name__}); delete it or set resume: never to start over"
        ) from None
    found = ckpt.get("fingerprint", {}) if isinstance(ckpt, dict) else {}
    if found != expected:
        diffs = _differences(found, expected)
        shown = ", ".join(d.removeprefix("settings.") for d in diffs[:6]) + (" ..." if len(diffs) > 6 else "")
        raise CheckpointError(
            f"checkpoint {path} was made by other code, settings or data (differs in: {shown}); "
            "resume: auto starts over in that case, resume: never always does"
        )
    return ckpt


def to_device(batch, device: torch.device):
    """Move a batch (tensors in nested tuples/lists) to `device`."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    return type(batch)(to_device(b, device) for b in batch)


class _Objective(nn.Module):
    """`loss_fn(model, batch, epoch)` as a module, so DistributedDataParallel runs the whole loss in its forward
    (whatever model methods the loss calls) and synchronises the tuner's gradients in backward."""

    def __init__(self, model: nn.Module, loss_fn: Callable):
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, batch, epoch: int) -> torch.Tensor:
        return self.loss_fn(self.model, batch, epoch)


def _batch_size(batch) -> int:
    """Images in a (possibly nested) batch: the leading size of its first tensor."""
    while not isinstance(batch, torch.Tensor):
        batch = batch[0]
    return len(batch)


def fit(
    model: nn.Module,
    train,
    val_loader,
    test_loader,
    loss_fn: Callable,
    *,
    epochs: int,
    lr: float,
    weight_decay: float,
    momentum: float,
    warmup_epochs: float,
    shot_counts,
    convention: str = "decoupling",
    device: torch.device | None = None,
    checkpoint: str | os.PathLike | None = None,
    resume: str = "auto",
    settings: dict | None = None,
    on_epoch_end: Callable[[int, dict], None] | None = None,
    desc: str = "train",
) -> FitResult:
    """Train `model.tuner` with SGD (momentum, weight decay), linear warm-up then cosine decay per step.

    `train` is a DataLoader, or a batch source called with the epoch (`SingleSampling`, `DualSampling`);
    `loss_fn(model, batch, epoch) -> loss`, with the batch already on the device. bf16 autocast on CUDA,
    float32 on CPU. Under torchrun (`lptlib.dist`) the loss runs in DistributedDataParallel and each rank's mean
    loss is weighted by its share of the global batch, so the update is the one-process update. After every epoch the val split (if any) is evaluated and the tuner state with the best val `overall` accuracy is kept
    (ties: the later epoch); without a val split the last epoch is kept. A checkpoint (trainable state,
    optimizer, epoch, RNG states, selection state) is written after every epoch. `resume`: 'auto'
    continues from `checkpoint` when it exists and matches this run, 'never' starts over, a path must
    exist and match. The test split is evaluated once, with the selected state.
    """
    device = device or default_device()
    model.to(device)
    params = [p for p in model.tuner.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if isinstance(train, DataLoader):
        train = SingleSampling(train)
    steps_per_epoch = len(train)
    total, warmup = epochs * steps_per_epoch, int(round(warmup_epochs * steps_per_epoch))
    expected = fingerprint(
        model,
        {
            "epochs": epochs,
            "lr": lr,
            "weight_decay": weight_decay,
            "momentum": momentum,
            "warmup_epochs": warmup_epochs,
            "steps_per_epoch": steps_per_epoch,
            **(settings or {}),
        },
    )
    start, history, best, resumed = 0, [], {"acc": -1.0, "epoch": -1, "state": None}, None
    source = None
    if resume not in ("auto", "never"):
        source = Path(resume)
    elif resume == "auto" and checkpoint is not None and Path(checkpoint).is_file():
        source = Path(checkpoint)
    if source is not None:
        try:
            ckpt = load_checkpoint(source, expected)
        except CheckpointError as e:
            if resume != "auto":
                raise
            print(f"not resuming: {e}")
        else:
            model.tuner.load_state_dict(ckpt["tuner"])
            opt.load_state_dict(ckpt["optimizer"])
            start, history, best, resumed = ckpt["epoch"] + 1, ckpt["history"], ckpt["best"], ckpt["epoch"]
            _set_rng_state(ckpt["rng"])
            print(f"resumed from {source} after epoch {ckpt['epoch']}")

    objective: nn.Module = _Objective(model, loss_fn)
    if dist.world_size() > 1:
        # find_unused_parameters: e.g. the group prompts no query picked in a step get no gradient
        objective = nn.parallel.DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
        )

    for epoch in range(start, epochs):
        model.train()
        losses = []
        batches = progress(train(epoch), desc=f"{desc} epoch {epoch + 1}/{epochs}", total=steps_per_epoch)
        for i, batch in enumerate(batches):
            step = epoch * steps_per_epoch + i
            for group in opt.param_groups:
                group["lr"] = cosine_lr(step, total, warmup, lr)
            batch = to_device(batch, device)
            with autocast(device):
                loss = objective(batch, epoch)
            weight, loss = dist.step_weight(_batch_size(batch), loss)
            check_finite(loss, epoch, i)
            loss = loss * weight
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        row = {"epoch": epoch, "loss": dist.mean_over_ranks(sum(losses) / len(losses)), "lr": opt.param_groups[0]["lr"]}
        if val_loader is not None:
            val, _ = evaluate(model, val_loader, device, shot_counts, convention, desc=f"{desc} val")
            row.update(val_overall=val["overall"], val_many=val["many"], val_medium=val["medium"], val_few=val["few"])
            score = val["overall"]
        else:
            score = float(epoch)  # no val split: the last epoch is selected
        if score >= best["acc"]:
            best = {
                "acc": score,
                "epoch": epoch,
                "state": {k: v.detach().cpu().clone() for k, v in model.tuner.state_dict().items()},
            }
        history.append(row)
        if checkpoint is not None:
            _save_checkpoint(
                checkpoint,
                {
                    "fingerprint": expected,
                    "epoch": epoch,
                    "tuner": model.tuner.state_dict(),
                    "optimizer": opt.state_dict(),
                    "history": history,
                    "best": best,
                    "rng": _rng_state(),
                },
            )
        if on_epoch_end is not None:
            on_epoch_end(epoch, row)

    model.tuner.load_state_dict(best["state"])
    val_metrics = None
    if val_loader is not None:
        val_metrics, _ = evaluate(model, val_loader, device, shot_counts, convention, desc=f"{desc} val")
    test_metrics, test_preds = evaluate(model, test_loader, device, shot_counts, convention, desc=f"{desc} test")
    return FitResult(best["epoch"], val_metrics, test_metrics, test_preds, history, resumed)


def _save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())
