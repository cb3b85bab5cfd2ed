"""Benchmarks that print ratios measured side by side in one run (never timed tests).

    python -m lptlib.bench prompt-overhead [--device cpu|cuda] [--batch-size 8] [--repeats 7]
    python -m lptlib.bench lpt-reuse [--device cpu|cuda] [--batch-size 4] [--repeats 7]

prompt-overhead: one VPT-deep training step (forward + backward to the prompts and head) divided by one
step of the frozen backbone with the gradient taken through its activations only (a trainable tensor
added to the tokens entering block 1, plus the same head), at ViT-B/16 224-px shapes with random
weights. The key/value prompt form (LPT eq. 1) and the concat-and-strip form are both timed; steps of
the three variants alternate, and the median of the repeats is reported. bf16 autocast on CUDA.

lpt-reuse: one LPT stage-2 training step (a class-balanced and an instance-balanced batch, A-GCL +
matching term, backward) with block-K reuse, divided by the same step in the official design (per batch a
full query pass and a full prompted pass), ViT-B/16 shapes, m = 20, k = 2, K = 6, l_p = 10. Counting block
passes (backward ~ 2 forwards; none through blocks 1..K in either design) predicts 30/36 = 0.83.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch import nn

from lptlib.config import BackboneConfig
from lptlib.engine import autocast
from lptlib.models import create_backbone
from lptlib.models.heads import build_head
from lptlib.models.peft import PromptedClassifier


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


def prompt_overhead(device: torch.device, batch_size: int, repeats: int, warmup: int, prompt_length: int,
                    arch: str = "vit_base_patch16_224") -> dict:
    torch.manual_seed(0)
    backbone = create_backbone(BackboneConfig(f"timm:{arch}", "random")).to(device)
    size = backbone.image_size
    x = torch.randn(batch_size, 3, size, size, device=device)
    y = torch.randint(0, 100, (batch_size,), device=device)
    models = {
        "frozen (activation grads)": FrozenWithActivationGrad(backbone, 100),
        "VPT-deep kv": PromptedClassifier(backbone, 100, prompt_length, prompt_form="kv"),
        "VPT-deep concat": PromptedClassifier(backbone, 100, prompt_length, prompt_form="concat"),
    }

    def step_fn(model: nn.Module) -> Callable[[], None]:
        model.to(device).train()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=1e-3)

        def step() -> None:
            with autocast(device):
                loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return step

    medians = time_steps({k: step_fn(m) for k, m in models.items()}, repeats, warmup, device)
    base = medians["frozen (activation grads)"]
    return {k: {"seconds": v, "ratio": v / base} for k, v in medians.items()}


def lpt_reuse(device: torch.device, batch_size: int, repeats: int, warmup: int, prompt_length: int,
              arch: str = "vit_base_patch16_224") -> dict:
    from lptlib.losses import AGCL
    from lptlib.lpt import dual_sampling_loss
    from lptlib.models.lpt import LPT

    torch.manual_seed(0)
    backbone = create_backbone(BackboneConfig(f"timm:{arch}", "random")).to(device)
    size = backbone.image_size
    counts = torch.randint(5, 500, (100,)).tolist()
    loss_fn = dual_sampling_loss(AGCL(counts).to(device), AGCL(counts, gamma_pos=0.5, gamma_neg=8.0).to(device),
                                 epochs=10, eta=0.5, match_weight=0.5)
    batch = tuple((torch.randn(batch_size, 3, size, size, device=device),
                   torch.randint(0, 100, (batch_size,), device=device)) for _ in range(2))
    model = LPT(backbone, 100, stage=2, prompt_length=prompt_length).to(device).train()
    params = [p for p in model.tuner.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-3)

    def step_fn(reuse: bool) -> Callable[[], None]:
        def step() -> None:
            model.reuse_block_k = reuse
            with autocast(device):
                loss = loss_fn(model, batch, 0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return step

    medians = time_steps({"official (2 full passes)": step_fn(False), "block-K reuse": step_fn(True)},
                         repeats, warmup, device)
    base = medians["official (2 full passes)"]
    return {k: {"seconds": v, "ratio": v / base} for k, v in medians.items()}


BENCHMARKS = {"prompt-overhead": (prompt_overhead, 8, 64), "lpt-reuse": (lpt_reuse, 4, 32)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lptlib.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("benchmark", choices=list(BENCHMARKS))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch-size", type=int, default=None,
                    help="default: 8 on CPU, 64 on CUDA (lpt-reuse: per branch, 4 on CPU, 32 on CUDA)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--prompt-length", type=int, default=10)
    ap.add_argument("--arch", default="vit_base_patch16_224", help="timm architecture (random weights)")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    fn, cpu_batch, gpu_batch = BENCHMARKS[args.benchmark]
    batch = args.batch_size or (gpu_batch if device.type == "cuda" else cpu_batch)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    precision = "bf16 autocast" if device.type == "cuda" else "float32"
    print(f"{args.benchmark}: {args.arch}, batch {batch}, l_p {args.prompt_length}, {where}, {precision}, "
          f"median of {args.repeats} interleaved steps")
    results = fn(device, batch, args.repeats, args.warmup, args.prompt_length, args.arch)
    for name, r in results.items():
        print(f"  {name:<28} {r['seconds'] * 1000:9.1f} ms/step   ratio {r['ratio']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
