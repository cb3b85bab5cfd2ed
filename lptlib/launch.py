"""Run a stage notebook on every process of a `torchrun` job (multi-GPU training, `lptlib.dist`).

    torchrun --nproc_per_node 4 -m lptlib.launch notebooks/02_lpt_stage1.ipynb outputs/nb/02_lpt_stage1.ipynb \\
        -k python3 -y "{overrides: {}}" -p out_dir outputs/lpt/stage1 -p stage1_path outputs/lpt/stage1/lpt_stage1.safetensors \\
        -p metrics_path metrics/lpt_stage1.json -p fig_dir figures/lpt/stage1

The arguments are papermill's. Rank 0 writes the executed notebook where asked; rank r > 0 writes
`<output>.rank<r>.ipynb` next to it (its log). The kernels inherit torchrun's environment, so the library joins the
process group at its first distributed call. Stages that train with `engine.fit` (vpt_study, lpt_stage1/2, tea,
lptpp phases 1 and 2) are data-parallel; the others (data, pretrain, lptpp phase 3, reports) are cheap or
sequential: run them with plain `dvc repro`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def rank_output(output: str, rank: int) -> str:
    """Where rank `rank` writes its executed notebook."""
    if rank == 0:
        return output
    p = Path(output)
    return str(p.with_name(f"{p.stem}.rank{rank}{p.suffix or '.ipynb'}"))


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    positional = [i for i, a in enumerate(args) if not a.startswith("-")]
    if len(positional) < 2 or positional[:2] != [0, 1]:
        print(
            "usage: torchrun --nproc_per_node N -m lptlib.launch INPUT.ipynb OUTPUT.ipynb [papermill options]",
            file=sys.stderr,
        )
        return 2
    if "WORLD_SIZE" not in os.environ:
        print("note: not under torchrun (WORLD_SIZE unset): running one process", file=sys.stderr)
    args[1] = rank_output(args[1], int(os.environ.get("RANK", "0")))
    from papermill.cli import papermill as papermill_cli

    return papermill_cli.main(args=args, prog_name="papermill", standalone_mode=False) or 0


if __name__ == "__main__":
    sys.exit(main())
