"""The training engine shared by every stage: learning-rate schedule, autocast, a non-finite-loss guard,
batched prediction, evaluation by shot group, and `fit` (train a fixed schedule, watch val, test the final state
once; per-epoch checkpoints and resume)."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import math
import os
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, SequentialSampler, Subset

from lptlib import dist
from lptlib.data.datasets import LTData
from lptlib.data.samplers import SingleSampling
from lptlib.measure.metrics import prior_corrected, shot_accuracy
from lptlib.schema import (
    BATCH_MAX,
    EPOCHS_MAX,
    Field,
    RuleError,
    Section,
    differences,
    model_validator,
    without_resume,
)
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
    """The outcome of a fixed schedule. Reported numbers (`test`, `val`) are those of the **last epoch**: the test
    split is evaluated once, after training. The epoch val would have picked is recorded as information only
    (`val_best_epoch`, `val_best_overall`), never used to choose the reported state."""

    epochs: int  # epochs trained: the reported state is the one after the last
    val: dict | None  # val metrics of the final state (None without a val split)
    test: dict  # test metrics of the final state, evaluated once
    test_predictions: torch.Tensor
    history: list[dict] = field(default_factory=list)  # per epoch: loss, lr (+ val accuracy at the val points)
    resumed_from_epoch: int | None = None
    steps: list[dict] = field(default_factory=list)  # per step: step, epoch, lr, loss
    val_best_epoch: int | None = None  # 0-based epoch with the best val overall among the val points (information)
    val_best_overall: float | None = None
    posthoc: dict | None = None  # the final state's test metrics after the post-hoc prior correction chosen on val

    def row(self, trainable_params: int) -> dict:
        """A metrics-file row: test accuracy by shot group of the final state (with per-class and the confusion
        counts when stored), trainable parameters, epochs, the final val accuracy and, labelled as such, the
        val-selected epoch and its val accuracy."""
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
        row.update(trainable_params=trainable_params, epochs=self.epochs)
        if self.val is not None:
            row.update(
                val_overall=self.val["overall"],
                **{f"val_{g}": self.val[g] for g in ("many", "medium", "few") if g in self.val},
                val_best_epoch=self.val_best_epoch,
                val_best_overall=self.val_best_overall,
            )
        if self.posthoc is not None:
            row.update(
                posthoc_tau=self.posthoc["tau"],
                **{f"posthoc_{k}": self.posthoc[k] for k in ("overall", "many", "medium", "few") if k in self.posthoc},
            )
        return row


def evaluate(
    model: nn.Module, loader, device: torch.device, data: LTData, desc: str = "evaluate"
) -> tuple[dict, torch.Tensor]:
    """shot_accuracy of `model`'s argmax predictions on `loader`, by the shot groups `data` carries; returns
    (metrics, predictions)."""
    model.eval()
    logits, labels = predict(model, loader, device, desc=desc)
    preds = logits.argmax(1)
    return shot_accuracy(preds, labels, data.shot_counts, groups=data.groups), preds


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
    return {"config": without_resume(cfg), "data": data.signature(), **run}


def fingerprint(trainable: nn.Module, model: nn.Module, settings: dict) -> dict:
    """What a checkpoint must match to be resumed: the digest of the code (`lptlib` sources and notebooks), the
    run's settings (see `run_settings`), the schedule, the trainable tensors' shapes and the digest of the
    model's starting state (frozen backbone weights + initial trainable state, e.g. a loaded stage-1 state)."""
    return {
        "settings": {"code": code_digest(), **settings, "initial_state": state_digest(model)},
        "shapes": {k: list(v.shape) for k, v in trainable.state_dict().items()},
    }


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
        diffs = differences(found, expected)
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


class Schedule(Section):
    """A training schedule: a params.yaml subsection such as `lpt.stage1` or `tea.lora` (SGD with momentum, linear
    warm-up then cosine decay per step)."""

    epochs: int = Field(
        20, ge=1, le=EPOCHS_MAX, description="training epochs (an epoch = as many images as the train set holds)"
    )
    batch_size: int = Field(64, ge=1, le=BATCH_MAX, description="images per step")
    lr: float = Field(
        0.05, gt=0.0, le=100.0, description="SGD peak learning rate (warm-up, then cosine decay per step)"
    )
    weight_decay: float = Field(1e-4, ge=0.0, le=1.0, description="SGD weight decay")
    momentum: float = Field(0.9, ge=0.0, le=1.0, description="SGD momentum")
    warmup_epochs: float = Field(1.0, ge=0.0, description="linear warm-up length in epochs (at most `epochs`)")
    eval_batch_size: int = Field(512, ge=1, le=BATCH_MAX, description="images per evaluation batch")
    val_every: int = Field(
        5,
        ge=1,
        le=EPOCHS_MAX,
        description="evaluate val every this many epochs and after the last (test: once, after training)",
    )

    @model_validator(mode="after")
    def _warmup_within(self) -> Schedule:
        if self.warmup_epochs > self.epochs:
            raise RuleError(
                "warmup_epochs", f"{self.warmup_epochs} warm-up epochs exceed the {self.epochs} training epochs"
            )
        return self


def schedule_of(cfg, row: str, schedule: Schedule) -> Schedule:
    """The schedule row `row` trains with: `schedule` (its params.yaml subsection), its learning rate replaced by
    `cfg.arm_lr[row]` where the learning-rate grid (or the user) set one (docs/tuning.md)."""
    lr = cfg.arm_lr.get(row)
    return schedule if lr is None else schedule.model_copy(update={"lr": lr})


@dataclass(frozen=True)
class Optim:
    """The optimiser of a run and its per-step learning rate: linear warm-up over `warmup_steps`, then cosine
    decay to 0 (`decay='cosine'`) or the peak kept (`decay='constant'`)."""

    kind: str  # 'sgd' | 'adamw'
    lr: float
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd
    betas: tuple[float, float] = (0.9, 0.999)  # adamw
    warmup_steps: int = 0
    decay: str = "cosine"
    param_groups: Callable[[nn.Module], list[dict]] | None = None  # e.g. no weight decay on norms and embeddings

    @classmethod
    def sgd(cls, schedule: Schedule, steps_per_epoch: int) -> Optim:
        """SGD from a `Schedule` (warm-up in epochs)."""
        return cls(
            "sgd",
            schedule.lr,
            schedule.weight_decay,
            schedule.momentum,
            warmup_steps=int(round(schedule.warmup_epochs * steps_per_epoch)),
        )

    def build(self, module: nn.Module) -> torch.optim.Optimizer:
        groups = self.param_groups(module) if self.param_groups else [p for p in module.parameters() if p.requires_grad]
        if self.kind == "sgd":
            return torch.optim.SGD(groups, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        if self.kind == "adamw":
            return torch.optim.AdamW(groups, lr=self.lr, betas=self.betas, weight_decay=self.weight_decay)
        raise ValueError(f"unknown optimiser {self.kind!r}")  # a bug in a recipe, not user input

    def lr_at(self, step: int, total_steps: int) -> float:
        if self.decay == "constant":
            return self.lr
        return cosine_lr(step, total_steps, self.warmup_steps, self.lr)


Evaluation = Callable[[nn.Module, str], tuple[dict, torch.Tensor]]
#: (val outputs, test outputs) of the final state -> test metrics after a post-hoc correction chosen on val
PriorCorrection = Callable[[torch.Tensor, torch.Tensor], dict]


@dataclass
class Run:
    """Everything the one training loop needs; a recipe builds it from its config section.

    `model.tuner` holds the trainable tensors (a model without `tuner` trains as a whole, e.g. pretraining).
    `batches(epoch)` yields the epoch's batches and `len(batches)` is the steps per epoch; `objective(model,
    batch, epoch) -> loss` with the batch on the device. `evaluate(model, split) -> (metrics, outputs)` with
    metrics['overall'] the val score and `outputs` (N, C) scores whose argmax is the prediction: called on 'val'
    every `val_every` epochs and after the last when `has_val`, and once on 'test' after training, with the final
    state. `prior_correction(val outputs, test outputs)` (if any) scores the final state's test outputs once more
    after a post-hoc prior correction chosen on val (`lptlib.measure.metrics.prior_corrected`). `settings`
    identify the run for resume (see `run_settings`)."""

    name: str
    model: nn.Module
    batches: Any
    objective: Callable
    epochs: int
    optim: Optim
    evaluate: Evaluation | None = None
    prior_correction: PriorCorrection | None = None
    has_val: bool = False
    val_every: int = 1
    checkpoint: str | os.PathLike | None = None
    resume: str = "never"
    settings: dict = field(default_factory=dict)
    device: torch.device | None = None

    @property
    def trainable(self) -> nn.Module:
        return getattr(self.model, "tuner", self.model)


def shot_evaluation(data: LTData, batch_size: int, device: torch.device) -> tuple[Evaluation, PriorCorrection | None]:
    """(`evaluate(model, split) -> (metrics, logits)`: shot-group accuracy of the argmax predictions on `data`'s val
    or test split, in sequential batches of `batch_size`; the post-hoc prior correction of the final state's
    logits, None without a val split)."""
    val_loader, test_loader = data.eval_loaders(batch_size)
    loaders, labels = {"val": val_loader, "test": test_loader}, {}

    def evaluation(model: nn.Module, split: str) -> tuple[dict, torch.Tensor]:
        model.eval()
        logits, labels[split] = predict(model, loaders[split], device, desc=split)
        return shot_accuracy(logits.argmax(1), labels[split], data.shot_counts, groups=data.groups), logits

    def correction(val_logits: torch.Tensor, test_logits: torch.Tensor) -> dict:
        return prior_corrected(val_logits, labels["val"], test_logits, labels["test"], data.train_counts, data.groups)

    return evaluation, (correction if val_loader is not None else None)


def classifier_run(
    model: nn.Module,
    train,
    objective: Callable,
    schedule: Schedule,
    data: LTData,
    *,
    checkpoint: str | os.PathLike | None = None,
    resume: str = "auto",
    settings: dict | None = None,
    name: str = "train",
) -> Run:
    """The run of a PEFT classifier: `model.tuner` trained with SGD by `schedule` on `train` (a DataLoader or a
    batch source called with the epoch), watched on `data`'s val split (if any) and its final state tested once on
    `data`'s test split, by the shot groups `data` carries (`data` as the model sees it: `LTData.transformed`)."""
    device = default_device()
    batches = SingleSampling(train) if isinstance(train, DataLoader) else train
    evaluation, correction = shot_evaluation(data, schedule.eval_batch_size, device)
    return Run(
        name,
        model,
        batches,
        objective,
        schedule.epochs,
        Optim.sgd(schedule, len(batches)),
        evaluate=evaluation,
        prior_correction=correction,
        has_val=correction is not None,
        val_every=schedule.val_every,
        checkpoint=checkpoint,
        resume=resume,
        device=device,
        settings={"batch_size": schedule.batch_size, **(settings or {})},
    )


def fit(run: Run, test: bool = True) -> FitResult:
    """The training loop of every stage: train `run.trainable` by `run.optim` for the fixed schedule, report the
    final state, test it once.

    bf16 autocast on CUDA, float32 on CPU. Under torchrun (`lptlib.dist`) the objective runs in
    DistributedDataParallel and each rank's mean loss is weighted by its share of the global batch, so the update
    is the one-process update. The val split (if any) is evaluated every `val_every` epochs and after the last one;
    the epoch with the best val `overall` is recorded (ties: the later epoch) but the reported state is always the
    last one, so nothing is selected after the fact. A checkpoint (trainable state, optimizer, epoch, RNG states,
    history) is written after every epoch. `resume`: 'auto' continues from `checkpoint` when it exists and its
    fingerprint matches this run (code, config, data, schedule, starting state), 'never' starts over, a path must
    exist and match. A non-finite loss stops the run at once. The test split is evaluated once, after training;
    `test=False` (learning-rate grids, `lptlib.tune`) never touches it.
    """
    device = run.device or default_device()
    model, trainable = run.model.to(device), run.trainable
    opt = run.optim.build(trainable)
    steps_per_epoch = len(run.batches)
    total = run.epochs * steps_per_epoch
    expected = fingerprint(
        trainable,
        model,
        {
            "epochs": run.epochs,
            "optim": _optim_settings(run.optim),
            "steps_per_epoch": steps_per_epoch,
            "val_every": run.val_every,
            **run.settings,
        },
    )
    start, history, steps, resumed = 0, [], [], None
    source = None
    if run.resume not in ("auto", "never"):
        source = Path(run.resume)
    elif run.resume == "auto" and run.checkpoint is not None and Path(run.checkpoint).is_file():
        source = Path(run.checkpoint)
    if source is not None:
        try:
            ckpt = load_checkpoint(source, expected)
        except CheckpointError as e:
            if run.resume != "auto":
                raise
            print(f"not resuming: {e}")
        else:
            trainable.load_state_dict(ckpt["tuner"])
            opt.load_state_dict(ckpt["optimizer"])
            start, history, resumed = ckpt["epoch"] + 1, ckpt["history"], ckpt["epoch"]
            steps = ckpt.get("steps", [])
            _set_rng_state(ckpt["rng"])
            print(f"resumed from {source} after epoch {ckpt['epoch']}")

    objective: nn.Module = _Objective(model, run.objective)
    if dist.world_size() > 1:
        # find_unused_parameters: e.g. the group prompts no query picked in a step get no gradient
        objective = nn.parallel.DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
        )

    val_metrics, val_out = None, None
    for epoch in range(start, run.epochs):
        model.train()
        losses = []
        batches = progress(run.batches(epoch), desc=f"{run.name} epoch {epoch + 1}/{run.epochs}", total=steps_per_epoch)
        for i, batch in enumerate(batches):
            step = epoch * steps_per_epoch + i
            lr = run.optim.lr_at(step, total)
            for group in opt.param_groups:
                group["lr"] = lr
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
            steps.append({"step": step, "epoch": epoch, "lr": lr, "loss": losses[-1]})
        row = {"epoch": epoch, "loss": dist.mean_over_ranks(sum(losses) / len(losses)), "lr": opt.param_groups[0]["lr"]}
        if run.has_val and ((epoch + 1) % run.val_every == 0 or epoch == run.epochs - 1):
            val_metrics, val_out = run.evaluate(model, "val")
            row.update({f"val_{k}": val_metrics[k] for k in ("overall", "many", "medium", "few") if k in val_metrics})
        history.append(row)
        if run.checkpoint is not None:
            _save_checkpoint(
                run.checkpoint,
                {
                    "fingerprint": expected,
                    "epoch": epoch,
                    "tuner": trainable.state_dict(),
                    "optimizer": opt.state_dict(),
                    "history": history,
                    "steps": steps,
                    "rng": _rng_state(),
                },
            )

    model.eval()
    test_metrics, test_preds, posthoc = {}, torch.empty(0, dtype=torch.long), None
    if run.evaluate is not None:
        if run.has_val and val_metrics is None:  # resumed after the last epoch: the final val is recomputed
            val_metrics, val_out = run.evaluate(model, "val")
        if test:
            test_metrics, test_out = run.evaluate(model, "test")
            test_preds = test_out.argmax(1)
            if run.prior_correction is not None and val_out is not None:
                posthoc = run.prior_correction(val_out, test_out)
    best_epoch, best_val = None, None
    for row in history:
        if "val_overall" in row and (best_val is None or row["val_overall"] >= best_val):
            best_epoch, best_val = row["epoch"], row["val_overall"]
    return FitResult(
        run.epochs, val_metrics, test_metrics, test_preds, history, resumed, steps, best_epoch, best_val, posthoc
    )


def _optim_settings(optim: Optim) -> dict:
    return {k: v for k, v in dataclasses.asdict(optim).items() if k != "param_groups"}


def _save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())
