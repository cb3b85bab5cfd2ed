"""A small training job run by tests/test_dist.py, once as one process and once under
`torchrun --nproc_per_node 2` (gloo, CPU): the VPT study's Table 1 runs (instance- and class-balanced
sampling), LPT stage 1 (dual sampling, A-GCL) and stage 2 (group prompts: parameters unused in some steps).

Usage: python tests/dist_job.py OUT_DIR   (rank 0 writes OUT_DIR/metrics.json and OUT_DIR/tuners.pt)
Training transforms are the deterministic test transforms and LPT runs without head dropout and A-GCL noise: every
process draws its own random numbers (as in any DDP run), so with them the runs are equal only in distribution.
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("LPTLIB_PROGRESS", "0")

import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

from lptlib import dist  # noqa: E402
from lptlib.config import parse  # noqa: E402
from lptlib.data import build_transforms, datasets  # noqa: E402
from lptlib.data.datasets import ArrayDataset, LTData  # noqa: E402
from lptlib.models import create_backbone  # noqa: E402
from lptlib.models.backbones import BackboneConfig  # noqa: E402
from lptlib.recipes import lpt, vpt_study  # noqa: E402
from lptlib.utils import save_json, seed_everything  # noqa: E402


def deterministic_transforms(cfg, norm):
    _, test = build_transforms(cfg, norm)
    return test, test


def tiny_data() -> LTData:
    rng = np.random.default_rng(0)
    counts = (22, 9, 5)  # 36 images: batches of 8 leave a last global batch of 4 (2 per rank)
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(counts)])
    images = rng.integers(0, 255, (len(labels), 28, 28), dtype=np.uint8)
    images[np.arange(len(labels)), labels * 7] = 255  # a learnable cue per class
    test_labels = np.repeat(np.arange(3), 6)
    test_images = rng.integers(0, 255, (len(test_labels), 28, 28), dtype=np.uint8)
    test_images[np.arange(len(test_labels)), test_labels * 7] = 255
    test = ArrayDataset(test_images, test_labels)
    return LTData("fashion_mnist_lt", ["t-shirt", "trouser", "bag"], ArrayDataset(images, labels), test, test)


def main(out: Path) -> None:
    datasets.build_transforms = deterministic_transforms  # what LTData.transformed builds
    run = {"epochs": 2, "batch_size": 8, "eval_batch_size": 5, "lr": 0.05, "warmup_epochs": 0.5}
    cfg = parse(
        seed=0,
        vpt_study={"linear_probe": run, "vpt_deep": run, "prompt_length": 2, "feature_views": 2},
        lpt={
            "stage1": run,
            "stage2": run,
            "prompt_length": 2,
            "pool_size": 4,
            "head_dropout": 0.0,
            "agcl": {"alpha": 0.0},
        },
    )  # no per-process random draws (dropout, A-GCL's Gaussian noise)
    seed_everything(cfg.seed)
    backbone = create_backbone(BackboneConfig("vit-mini", "random"))
    data = tiny_data()
    metrics, tuners = {}, {}
    table = vpt_study.run_table1(backbone, data, cfg, out / "checkpoints")
    for name, row in table.rows.items():
        metrics[name] = {k: v for k, v in row.items() if k != "history"}
    for sampling, m in table.models.items():
        tuners[f"vpt_deep/{sampling}"] = m.tuner.state_dict()
    torch.manual_seed(cfg.seed)
    stage1 = lpt.build_lpt(backbone, data.num_classes, cfg.lpt, stage=1)
    metrics["lpt_stage1"] = lpt.train_stage(stage1, data, cfg, out / "checkpoints" / "stage1.pt").row(0)
    tuners["lpt_stage1"] = stage1.tuner.state_dict()
    lpt.save_stage1(stage1, out / "stage1.safetensors")
    dist.barrier()  # rank 0 wrote the file the other ranks read next
    torch.manual_seed(cfg.seed)
    stage2 = lpt.build_lpt(backbone, data.num_classes, cfg.lpt, stage=2)
    lpt.load_stage1(stage2, out / "stage1.safetensors")
    metrics["lpt_stage2"] = lpt.train_stage(stage2, data, cfg, out / "checkpoints" / "stage2.pt").row(0)
    tuners["lpt_stage2"] = stage2.tuner.state_dict()
    metrics["world_size"] = dist.world_size()
    save_json(metrics, out / "metrics.json")
    if dist.is_main():
        torch.save(tuners, out / "tuners.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
