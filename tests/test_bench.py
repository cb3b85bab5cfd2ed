"""The benchmarks run end to end on tiny shapes (their figures come from the real shapes, in docs/benchmarks.md)."""

import torch

from lptlib.bench import main, training_throughput


def test_training_throughput_runs_every_method_against_its_frozen_baseline():
    out = training_throughput(
        torch.device("cpu"), batch_size=2, repeats=1, warmup=0, prompt_length=2, arch="vit-mini", clip_arch="clip-mini"
    )
    assert set(out) == {
        "frozen ViT (activation grads)",
        "VPT-deep",
        "LPT stage 2",
        "LPT++ phase 1",
        "frozen CLIP (activation grads)",
        "TEA (AdaptFormer, PEA+PG+TEC)",
    }
    assert (
        out["frozen ViT (activation grads)"]["ratio"] == 1.0 and out["frozen CLIP (activation grads)"]["ratio"] == 1.0
    )
    for r in out.values():
        assert r["images_per_second"] > 0 and r["ratio"] > 0 and r["peak_memory_gib"] is None  # no GPU here


def test_bench_cli_prints_ratios(capsys):
    assert (
        main(
            [
                "prompt-overhead",
                "--device",
                "cpu",
                "--arch",
                "vit_mini_patch7_28",
                "--batch-size",
                "2",
                "--repeats",
                "1",
                "--warmup",
                "0",
                "--prompt-length",
                "2",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "VPT-deep kv" in out and "ratio" in out
