"""Benchmarks that print ratios measured side by side in one run (never timed tests).

    python -m lptlib.bench prompt-overhead [--device cpu|cuda] [--batch-size 8] [--repeats 7]
    python -m lptlib.bench lpt-reuse [--device cpu|cuda] [--batch-size 4] [--repeats 7]
    python -m lptlib.bench tea-overhead [--device cpu|cuda] [--batch-size 8] [--repeats 7]
    python -m lptlib.bench training-throughput [--device cpu|cuda] [--batch-size 64] [--repeats 7]

prompt-overhead: one VPT-deep training step (forward + backward to the prompts and head) divided by one
step of the frozen backbone with the gradient taken through its activations only (a trainable tensor
added to the tokens entering block 1, plus the same head), at ViT-B/16 224-px shapes with random
weights. The key/value prompt form (LPT eq. 1) and the concat-and-strip form are both timed; steps of
the three variants alternate, and the median of the repeats is reported. bf16 autocast on CUDA.

lpt-reuse: one LPT stage-2 training step (a class-balanced and an instance-balanced batch, A-GCL +
matching term, backward) with block-K reuse, divided by the same step in the official design (per batch a
full query pass and a full prompted pass), ViT-B/16 shapes, m = 20, k = 2, K = 6, l_p = 10. Counting block
passes (backward ~ 2 forwards; none through blocks 1..K in either design) predicts 30/36 = 0.83.

tea-overhead: for each PEFT method on the CLIP ViT-B/16 visual encoder (random weights, cosine head, LA loss),
the inference time of a model trained with TEA (PEA + PG + TEC) divided by the plain PEFT model's, and a TEA
training step divided by a plain one; the two variants alternate. TEA is training-only, so the inference ratio
measures noise around 1 (target <= 1.01) and the parameter counts are checked equal.

training-throughput: ViT-B/16 224 px training images per second (bf16 autocast on CUDA) of VPT-deep, LPT stage 2,
LPT++ phase 1 (timm ViT-B/16) and TEA (AdaptFormer on the CLIP ViT-B/16 visual encoder), each as a fraction of the
frozen backbone's forward + backward-through-activations throughput on the same backbone, plus peak GPU memory
per step. LPT and LPT++ steps hold two batches (dual sampling). Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch import nn

from lptlib.engine import autocast
from lptlib.models import create_backbone
from lptlib.models.backbones import BackboneConfig
from lptlib.models.heads import build_head
from lptlib.models.peft import PEFTClassifier


class FrozenWithActivationGrad(nn.Module):
    """The baseline: the frozen backbone, backpropagated through to a trainable tensor at its input."""

    def __init__(self, backbone, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.tuner = nn.ModuleDict({"head": build_head("linear", backbone.embed_dim, num_classes)})
        self.delta = nn.Parameter(torch.zeros(backbone.embed_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.backbone
        tokens = b.embed(x) + self.delta
        for block in b.blocks:
            tokens = block(tokens)
        return self.tuner["head"](b.final_norm(tokens)[:, 0])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _cross_entropy(model: nn.Module, batch, epoch: int) -> torch.Tensor:
    return nn.functional.cross_entropy(model(batch[0]), batch[1])


def _train_step(model: nn.Module, loss_fn: Callable, batch, device: torch.device) -> Callable[[], None]:
    """One SGD step of `loss_fn(model, batch, 0)` on every trainable tensor of `model`, as a closure."""
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)

    def step() -> None:
        with autocast(device):
            loss = loss_fn(model, batch, 0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def time_steps(steps: dict[str, Callable[[], None]], repeats: int, warmup: int, device: torch.device) -> dict:
    """Median seconds per step of each function, the functions interleaved (round robin)."""
    for _ in range(warmup):
        for fn in steps.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(repeats):
        for name, fn in steps.items():
            _sync(device)
            t = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def prompt_overhead(
    device: torch.device,
    batch_size: int,
    repeats: int,
    warmup: int,
    prompt_length: int,
    arch: str = "vit_base_patch16_224",
) -> dict:
    torch.manual_seed(0)
    backbone = create_backbone(BackboneConfig(f"timm:{arch}", "random")).to(device)
    size = backbone.image_size
    x = torch.randn(batch_size, 3, size, size, device=device)
    y = torch.randint(0, 100, (batch_size,), device=device)
    models = {
        "frozen (activation grads)": FrozenWithActivationGrad(backbone, 100),
        "VPT-deep kv": PEFTClassifier(backbone, 100, prompt_length, prompt_form="kv"),
        "VPT-deep concat": PEFTClassifier(backbone, 100, prompt_length, prompt_form="concat"),
    }

    medians = time_steps(
        {k: _train_step(m.to(device).train(), _cross_entropy, (x, y), device) for k, m in models.items()},
        repeats,
        warmup,
        device,
    )
    base = medians["frozen (activation grads)"]
    return {k: {"seconds": v, "ratio": v / base} for k, v in medians.items()}


def lpt_reuse(
    device: torch.device,
    batch_size: int,
    repeats: int,
    warmup: int,
    prompt_length: int,
    arch: str = "vit_base_patch16_224",
) -> dict:
    from lptlib.models.peft import LPT
    from lptlib.objectives import AGCL, dual_sampling_objective

    torch.manual_seed(0)
    backbone = create_backbone(BackboneConfig(f"timm:{arch}", "random")).to(device)
    size = backbone.image_size
    counts = torch.randint(5, 500, (100,)).tolist()
    loss_fn = dual_sampling_objective(
        AGCL(counts).to(device),
        AGCL(counts, gamma_pos=0.5, gamma_neg=8.0).to(device),
        epochs=10,
        eta=0.5,
        match_weight=0.5,
    )
    batch = tuple(
        (torch.randn(batch_size, 3, size, size, device=device), torch.randint(0, 100, (batch_size,), device=device))
        for _ in range(2)
    )
    model = LPT(backbone, 100, stage=2, prompt_length=prompt_length).to(device).train()

    def with_reuse(reuse: bool) -> Callable:
        def loss(m: LPT, b, epoch: int) -> torch.Tensor:
            m.reuse_block_k = reuse
            return loss_fn(m, b, epoch)

        return loss

    medians = time_steps(
        {
            "official (2 full passes)": _train_step(model, with_reuse(False), batch, device),
            "block-K reuse": _train_step(model, with_reuse(True), batch, device),
        },
        repeats,
        warmup,
        device,
    )
    base = medians["official (2 full passes)"]
    return {k: {"seconds": v, "ratio": v / base} for k, v in medians.items()}


def tea_overhead(
    device: torch.device,
    batch_size: int,
    repeats: int,
    warmup: int,
    prompt_length: int,
    arch: str = "open_clip:ViT-B-16",
) -> dict:
    """Per PEFT method: inference of a TEA-trained model / the plain model, and a TEA training step / a plain one."""
    from lptlib import config
    from lptlib.models.peft import count_trainable
    from lptlib.objectives import tea_objective
    from lptlib.recipes.tea import build_objective, build_tea
    from lptlib.sections import PEFT_METHODS, peft_arguments

    torch.manual_seed(0)
    backbone = create_backbone(BackboneConfig(arch, "random")).to(device)
    size, classes = backbone.image_size, 100
    counts = torch.randint(5, 500, (classes,)).tolist()
    cfg = config.parse(tea={"prompt_length": prompt_length})
    x = torch.randn(batch_size, 3, size, size, device=device)
    y = torch.randint(0, classes, (batch_size,), device=device)
    results = {}
    for peft in PEFT_METHODS:
        models, steps = {}, {}
        for variant in ("none", "pea_pg_tec"):
            torch.manual_seed(1)
            model = (
                PEFTClassifier(
                    backbone, classes, **peft_arguments(peft, cfg.tea), head="cosine", cosine_scale=cfg.tea.cosine_scale
                )
                .to(device)
                .train()
            )
            objective = tea_objective(
                build_objective("la", counts, cfg).to(device), build_tea(counts, cfg, variant).to(device)
            )
            models[variant], steps[variant] = model, _train_step(model, objective, (x, y), device)
        if count_trainable(models["none"]) != count_trainable(models["pea_pg_tec"]):
            raise AssertionError("TEA changed the parameter count")
        train = time_steps({"plain": steps["none"], "TEA": steps["pea_pg_tec"]}, repeats, warmup, device)

        def infer(model: nn.Module) -> Callable[[], None]:
            def run() -> None:
                with torch.no_grad(), autocast(device):
                    model(x)

            return run

        for m in models.values():
            m.eval()
        infer_t = time_steps(
            {"plain": infer(models["none"]), "TEA": infer(models["pea_pg_tec"])}, 3 * repeats, warmup, device
        )
        params = count_trainable(models["none"])
        results[f"{peft} inference plain"] = {"seconds": infer_t["plain"], "ratio": 1.0}
        results[f"{peft} inference TEA-trained"] = {
            "seconds": infer_t["TEA"],
            "ratio": infer_t["TEA"] / infer_t["plain"],
        }
        results[f"{peft} train step plain"] = {"seconds": train["plain"], "ratio": 1.0}
        results[f"{peft} train step TEA"] = {"seconds": train["TEA"], "ratio": train["TEA"] / train["plain"]}
        print(f"  {peft}: {params:,} trainable parameters with and without TEA")
    return results


def _peak_memory(step: Callable[[], None], device: torch.device) -> float | None:
    """Peak GPU memory (GiB) of one step, everything resident included; None on the CPU."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated(device) / 2**30


def training_throughput(
    device: torch.device,
    batch_size: int,
    repeats: int,
    warmup: int,
    prompt_length: int,
    arch: str = "timm:vit_base_patch16_224",
    clip_arch: str = "open_clip:ViT-B-16",
) -> dict:
    """Training images per second of VPT-deep, LPT stage 2, TEA and LPT++ phase 1, each divided by the frozen
    backbone's forward + backward-through-activations throughput on the same backbone (ratio <= 1 is the cost of
    the method); peak memory per step on CUDA. LPT and LPT++ steps take a class-balanced and an
    instance-balanced batch (dual sampling), so they process 2 x batch images per step."""
    from lptlib import config
    from lptlib.models.peft import LPT
    from lptlib.objectives import AGCL, dual_sampling_objective, tea_objective
    from lptlib.recipes.tea import build_objective, build_tea

    classes = 100
    torch.manual_seed(0)
    counts = torch.randint(5, 500, (classes,)).tolist()
    visual = create_backbone(BackboneConfig(arch, "random")).to(device)
    clip = create_backbone(BackboneConfig(clip_arch, "random")).to(device)

    def images(backbone):
        size = backbone.image_size
        return (
            torch.randn(batch_size, 3, size, size, device=device),
            torch.randint(0, classes, (batch_size,), device=device),
        )

    dual = dual_sampling_objective(
        AGCL(counts).to(device),
        AGCL(counts, gamma_pos=0.5, gamma_neg=8.0).to(device),
        epochs=10,
        eta=0.5,
        match_weight=0.5,
    )
    cfg = config.parse(tea={"prompt_length": prompt_length})
    tea_loss = tea_objective(
        build_objective("la", counts, cfg).to(device), build_tea(counts, cfg, "pea_pg_tec").to(device)
    )
    vb, cb = images(visual), images(clip)
    dual_batch = (vb, images(visual))
    torch.manual_seed(1)
    # name: (backbone of the baseline, images per step, step)
    runs = {
        "frozen ViT (activation grads)": (
            "visual",
            batch_size,
            _train_step(FrozenWithActivationGrad(visual, classes).to(device).train(), _cross_entropy, vb, device),
        ),
        "VPT-deep": (
            "visual",
            batch_size,
            _train_step(PEFTClassifier(visual, classes, prompt_length).to(device).train(), _cross_entropy, vb, device),
        ),
        "LPT stage 2": (
            "visual",
            2 * batch_size,
            _train_step(
                LPT(visual, classes, stage=2, prompt_length=prompt_length).to(device).train(), dual, dual_batch, device
            ),
        ),
        "LPT++ phase 1": (
            "visual",
            2 * batch_size,
            _train_step(
                LPT(visual, classes, stage=1, prompt_length=prompt_length, adapter=True).to(device).train(),
                dual,
                dual_batch,
                device,
            ),
        ),
        "frozen CLIP (activation grads)": (
            "clip",
            batch_size,
            _train_step(FrozenWithActivationGrad(clip, classes).to(device).train(), _cross_entropy, cb, device),
        ),
        "TEA (AdaptFormer, PEA+PG+TEC)": (
            "clip",
            batch_size,
            _train_step(
                PEFTClassifier(clip, classes, adapter=True, head="cosine", cosine_scale=25.0).to(device).train(),
                tea_loss,
                cb,
                device,
            ),
        ),
    }
    memory = {name: _peak_memory(step, device) for name, (_, _, step) in runs.items()}
    medians = time_steps({name: step for name, (_, _, step) in runs.items()}, repeats, warmup, device)
    rate = {name: n / medians[name] for name, (_, n, _) in runs.items()}
    base = {"visual": rate["frozen ViT (activation grads)"], "clip": rate["frozen CLIP (activation grads)"]}
    return {
        name: {
            "seconds": medians[name],
            "images_per_second": rate[name],
            "ratio": rate[name] / base[which],
            "peak_memory_gib": memory[name],
        }
        for name, (which, _, _) in runs.items()
    }


BENCHMARKS = {
    "prompt-overhead": (prompt_overhead, 8, 64),
    "lpt-reuse": (lpt_reuse, 4, 32),
    "tea-overhead": (tea_overhead, 8, 64),
    "training-throughput": (training_throughput, 4, 64),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m lptlib.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("benchmark", choices=list(BENCHMARKS))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="default: 8 on CPU, 64 on CUDA (lpt-reuse: per branch, 4 on CPU, 32 on CUDA)",
    )
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--prompt-length", type=int, default=10)
    ap.add_argument(
        "--arch",
        default=None,
        help="architecture with random weights (default: timm vit_base_patch16_224; tea-overhead: open_clip:ViT-B-16)",
    )
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    fn, cpu_batch, gpu_batch = BENCHMARKS[args.benchmark]
    batch = args.batch_size or (gpu_batch if device.type == "cuda" else cpu_batch)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    precision = "bf16 autocast" if device.type == "cuda" else "float32"
    print(
        f"{args.benchmark}: {args.arch or 'default architecture'}, batch {batch}, l_p {args.prompt_length}, "
        f"{where}, {precision}, median of {args.repeats} interleaved steps"
    )
    if args.arch is not None:
        results = fn(device, batch, args.repeats, args.warmup, args.prompt_length, args.arch)
    else:
        results = fn(device, batch, args.repeats, args.warmup, args.prompt_length)
    for name, r in results.items():
        extra = ""
        if "images_per_second" in r:
            extra = f"   {r['images_per_second']:8.1f} img/s"
            extra += f"   peak {r['peak_memory_gib']:.2f} GiB" if r["peak_memory_gib"] is not None else ""
        print(f"  {name:<32} {r['seconds'] * 1000:9.1f} ms/step   ratio {r['ratio']:.3f}{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
