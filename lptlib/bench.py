"""Benchmarks that print ratios measured side by side in one run (never timed tests).

    python -m lptlib.bench prompt-overhead [--device cpu|cuda] [--batch-size 8] [--repeats 7]

prompt-overhead: one VPT-deep training step (forward + backward to the prompts and head) divided by one
step of the frozen backbone with the gradient taken through its activations only (a trainable tensor
added to the tokens entering block 1, plus the same head), at ViT-B/16 224-px shapes with random
weights. The key/value prompt form (LPT eq. 1) and the concat-and-strip form are both timed; steps of
the three variants alternate, and the median of the repeats is reported. bf16 autocast on CUDA.
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lptlib.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("benchmark", choices=["prompt-overhead"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch-size", type=int, default=None, help="default: 8 on CPU, 64 on CUDA")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--prompt-length", type=int, default=10)
    ap.add_argument("--arch", default="vit_base_patch16_224", help="timm architecture (random weights)")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    batch = args.batch_size or (64 if device.type == "cuda" else 8)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    precision = "bf16 autocast" if device.type == "cuda" else "float32"
    print(f"prompt-overhead: {args.arch}, batch {batch}, l_p {args.prompt_length}, {where}, {precision}, "
          f"median of {args.repeats} interleaved steps")
    results = prompt_overhead(device, batch, args.repeats, args.warmup, args.prompt_length, args.arch)
    for name, r in results.items():
        print(f"  {name:<28} {r['seconds'] * 1000:9.1f} ms/step   ratio {r['ratio']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
