import os

os.environ.setdefault("LPTLIB_PROGRESS", "0")
os.environ.setdefault("MPLBACKEND", "Agg")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)  # tests run under pytest-xdist, one worker per core

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    monkeypatch.chdir(ROOT)


def make_tiny_lt(names=("t-shirt", "trouser", "bag"), counts=(12, 4, 2), test_per_class=3, seed=0):
    """A 3-class long-tailed LTData of random 28 x 28 images (train = counts, val = test)."""
    import numpy as np

    from lptlib.data.datasets import ArrayDataset, LTData

    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(counts)])
    train = ArrayDataset(rng.integers(0, 255, (len(labels), 28, 28), dtype=np.uint8), labels)
    k = len(counts)
    test = ArrayDataset(
        rng.integers(0, 255, (k * test_per_class, 28, 28), dtype=np.uint8), np.repeat(np.arange(k), test_per_class)
    )
    return LTData("fashion_mnist_lt", list(names), train, test, test)


@pytest.fixture
def tiny_lt():
    return make_tiny_lt


def fit_classifier(
    model,
    train,
    val,
    test,
    objective,
    *,
    epochs,
    lr,
    weight_decay,
    momentum,
    warmup_epochs,
    shot_counts,
    val_every=1,
    **rest,
):
    """`fit(classifier_run(...))` with the schedule given as keywords and the data as loaders (the tests'
    shorthand; val every epoch): the val / test loaders' datasets and `shot_counts` become the run's `LTData`."""
    import numpy as np

    from lptlib.data.datasets import LTData
    from lptlib.engine import Schedule, classifier_run, fit

    schedule = Schedule(
        epochs=epochs,
        lr=lr,
        weight_decay=weight_decay,
        momentum=momentum,
        warmup_epochs=warmup_epochs,
        val_every=val_every,
        eval_batch_size=test.batch_size,
    )
    names = [f"class {c}" for c in range(len(shot_counts))]
    val_set = val.dataset if val is not None else None
    data = LTData("toy_lt", names, train.dataset, val_set, test.dataset, group_counts=np.asarray(shot_counts))
    return fit(classifier_run(model, train, objective, schedule, data, **rest))


SECTION_PARAMETERS = ("seed", "seeds", "workers", "preset", "data", "backbones", "pretrain", "vpt_study", "lpt", "tea")
SECTION_PARAMETERS += ("lptpp",)


def notebook_parameters(notebook, **params) -> dict:
    """papermill parameters for `notebook` (a path): the config sections among `params` (seed, data, lpt, ...) go
    into `overrides`, each replacing the same section of the notebook's default overrides, with no params file (the
    code defaults alone); the other `params` are the notebook's own (paths, phase, ...)."""
    import ast
    import json
    from pathlib import Path

    nb = json.loads(Path(notebook).read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    tree = ast.parse("".join(cell["source"]))
    default = next(ast.literal_eval(n.value) for n in tree.body if n.target.id == "overrides")
    sections = {k: v for k, v in params.items() if k in SECTION_PARAMETERS}
    own = {k: v for k, v in params.items() if k not in SECTION_PARAMETERS}
    names = {n.target.id for n in tree.body if isinstance(n, ast.AnnAssign)}
    unknown = sorted(set(own) - names)  # papermill only warns ("Passed unknown parameter") and runs the defaults
    assert not unknown, f"{Path(notebook).name} has no parameter {unknown}; its parameters: {sorted(names)}"
    return {"params": "", "overrides": {**default, **sections}, **own}


def process_alive(pid: int) -> bool:
    """Whether process `pid` exists and is neither a zombie nor dead (Linux /proc)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def wait_for(predicate, timeout: float = 20.0) -> None:
    """Poll `predicate` every 0.1 s until it is true; fail after `timeout` seconds."""
    import time

    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.1)
