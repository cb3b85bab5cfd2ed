"""What every notebook does first: run from the repository root, validate its parameters before any
data is read, seed, and write the resolved config next to the stage's outputs. A notebook then gets its data from
`lptlib.pool.setup(cfg)`, the door every worker task of `lptlib.pool.run_tasks` goes through too."""

from __future__ import annotations

import os
from typing import Any

from lptlib.config import Config, parse, save_resolved
from lptlib.paths import repo_root, resolve
from lptlib.report.plots import set_style
from lptlib.utils import seed_everything


def start(stage: str, out_dir: str, **sections: Any) -> Config:
    """Validate `sections` (the notebook's params.yaml sections) into a `Config` and prepare the stage.

    Raises `ConfigError` naming the bad key before anything else happens.
    """
    os.chdir(repo_root())
    cfg = parse(**sections)
    seed_everything(cfg.seed)
    set_style()
    out = resolve(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_resolved(cfg, out / "config.yaml", stage=stage)
    return cfg
