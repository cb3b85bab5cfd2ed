"""What every notebook does first: run from the repository root, compose and validate its configuration before any
data is read, seed, and write the resolved config next to the stage's outputs. A notebook then gets its data from
`lptlib.pool.setup(cfg)`, the door every worker task of `lptlib.pool.run_tasks` goes through too.

A notebook's parameters are the params file and the overrides over it, plus its own paths: papermill never
injects a section of `params.yaml` (the DVC stages pass `-y "{overrides: {seed: N}}"`), so no parameter is
unknown to the notebook and no value of the file reaches the notebook as code."""

from __future__ import annotations

import os
from collections.abc import Mapping

from lptlib.config import Config, compose, load, save_resolved
from lptlib.paths import repo_root, resolve
from lptlib.report.plots import set_style
from lptlib.utils import exit_with_parent, seed_everything


def start(stage: str, out_dir: str, params: str = "params.yaml", overrides: Mapping | None = None) -> Config:
    """The stage's `Config`: `params` (a params file; "" for the code defaults alone) composed with its preset and
    `overrides` (dotted or nested keys) on top; then seed and write the resolved config to `out_dir/config.yaml`.

    Raises `ConfigError` naming the bad key before anything else happens."""
    os.chdir(repo_root())
    cfg = load(resolve(params), overrides) if params else compose(None, overrides)
    exit_with_parent()  # the kernel stops with papermill (or JupyterLab's server), its workers with it
    seed_everything(cfg.seed)
    set_style()
    out = resolve(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_resolved(cfg, out / "config.yaml", stage=stage)
    return cfg
