"""What every notebook does first: run from the repository root, compose and validate its configuration before any
data is read, seed, and write the resolved config next to the stage's outputs. A notebook then gets its data from
`lptlib.pool.setup(cfg)`, the door every worker task of `lptlib.pool.run_tasks` goes through too. Before both, a
notebook's first code cell calls `guard_parameters()`: papermill's injected cell may then only assign values to the
names its parameters cell declares (an unknown `-p` name or a value that is code is a `ConfigError`, before it runs).

A notebook's parameters are the params file and the overrides over it, plus its own paths: papermill never
injects a section of `params.yaml` (the DVC stages pass `-y "{overrides: {seed: N}}"`), so no parameter is
unknown to the notebook and no value of the file reaches the notebook as code."""

from __future__ import annotations

import ast
import difflib
import os
from collections.abc import Mapping
from pathlib import Path

from lptlib.config import Config, compose, load, save_resolved
from lptlib.paths import repo_root, resolve
from lptlib.report.plots import set_style
from lptlib.utils import exit_with_parent, seed_everything


def start(stage: str, out_dir: str, params: str = "params.yaml", overrides: Mapping | None = None) -> Config:
    """The stage's `Config`: `params` (a params file; "" for the code defaults alone) composed with its preset and
    `overrides` (dotted or nested keys) on top; then seed and write the resolved config to `out_dir/config.yaml`.

    Raises `ConfigError` naming the bad key before anything else happens."""
    check_origin()
    os.chdir(repo_root())
    cfg = load(resolve(params), overrides) if params else compose(None, overrides)
    exit_with_parent()  # the kernel stops with papermill (or JupyterLab's server), its workers with it
    seed_everything(cfg.seed)
    set_style()
    out = resolve(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_resolved(cfg, out / "config.yaml", stage=stage)
    return cfg


def check_origin() -> None:
    """Refuse a run whose `lptlib` comes from another clone than the repository it writes into (a kernel of another
    clone's environment, or `LPTLIB_ROOT` naming another clone): its results would mix two clones' code and outputs.
    An installed (non-editable) lptlib is not checked."""
    package_repo = Path(__file__).resolve().parents[1]
    if not all((package_repo / m).is_file() for m in ("dvc.yaml", "params.yaml")):
        return
    root = repo_root().resolve()
    if package_repo != root:
        from lptlib.schema import ConfigError

        why = f"LPTLIB_ROOT={os.environ['LPTLIB_ROOT']}" if os.environ.get("LPTLIB_ROOT") else "the working directory"
        raise ConfigError(
            f"this run imports lptlib from {package_repo} but writes into the repository {root} ({why}): its "
            "results would mix two clones' code and outputs. Fix: run from the clone whose lptlib you use (JupyterLab "
            "of that clone: make lab; a stage: PYTHONPATH=$PWD), or unset LPTLIB_ROOT"
        )


# ------------------------------------------------------------------------- papermill's injected parameters
#: the first line of the cell papermill injects after a notebook's `parameters` cell (papermill's Python translator)
INJECTED_HEADER = "# Parameters\n"


def _declared(source: str) -> set[str]:
    """Names a parameters cell assigns at its top level."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return set()
    names = set()
    for node in tree.body:
        targets = (
            node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        )
        names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


def injected_problem(injected: str, parameters_cell: str) -> str | None:
    """What is wrong with papermill's injected cell `injected`, given the notebook's parameters cell, or None: every
    line must assign a literal (data, never code) to a parameter the notebook declares."""
    declared = _declared(parameters_cell)
    how = (
        "pass a params file as `-p params <file>` and single keys as `-y '{overrides: {data.imbalance: 50}}'` "
        "(never `-f params.yaml`: papermill would write its keys into the notebook as code)"
    )
    try:
        tree = ast.parse(injected)
    except SyntaxError:
        return f"papermill's injected parameters are not plain assignments (a key that is not a name?); {how}"
    for node in tree.body:
        line = ast.get_source_segment(injected, node) or ""
        target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else None
        if not isinstance(target, ast.Name):
            return f"papermill's injected parameters hold code, not a value: {line[:80]!r}; {how}"
        try:
            ast.literal_eval(node.value)
        except ValueError:
            return f"papermill parameter {target.id!r} is code, not a value: {line[:80]!r}; {how}"
        if target.id not in declared:
            from lptlib.config import SECTIONS

            close = difflib.get_close_matches(target.id, sorted(declared), n=1)
            key = difflib.get_close_matches(target.id, SECTIONS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            via = f"set it through `overrides`, e.g. -y '{{overrides: {{{key[0] if key else target.id}: ...}}}}'"
            if target.id in SECTIONS:
                hint = f" ({target.id!r} is a params.yaml key: {via})"
            elif key and not close:
                hint = f" (did you mean the params.yaml key {key[0]!r}? {via})"
            return (
                f"papermill parameter {target.id!r} is not a parameter of this notebook{hint}; its parameters: "
                f"{', '.join(sorted(declared))}; {how}"
            )
    return None


def guard_parameters() -> None:
    """A notebook's first code cell: refuse papermill's injected cell, before it runs, unless it only assigns values
    (literals) to names the notebook's `parameters` cell declares. An unknown `-p` name (a typo, or a params.yaml
    key injected by `-f`) or a value that is code becomes a `ConfigError` naming it, instead of papermill's warning
    and a run with the defaults. Outside IPython (and in JupyterLab, where nothing is injected) nothing changes."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover
        return
    ip = get_ipython()
    if ip is None:
        return
    transformers = ip.input_transformers_cleanup
    transformers[:] = [t for t in transformers if getattr(t, "__name__", "") != "_check_injected"]

    # While a cell runs, the count is already the next cell's: the parameters cell's here, and while cells are
    # transformed it is their own, so papermill's injected cell (right after the parameters cell) comes at count + 1.
    parameters_count = ip.execution_count

    def _check_injected(lines: list[str]) -> list[str]:
        source = "".join(lines)
        if ip.execution_count != parameters_count + 1 or not source.startswith(INJECTED_HEADER):
            return lines  # not papermill's cell (JupyterLab: nothing is injected)
        history = ip.user_ns.get("In") or [""]
        problem = injected_problem(source, history[-1] if len(history) > 1 else "")
        if problem is None:
            return lines
        return [f"from lptlib.schema import ConfigError\nraise ConfigError({problem!r})\n"]

    transformers.append(_check_injected)
