"""The door of every run (`lptlib.pool`): a task receives its ready Config and the data of its seed."""

import pytest

from lptlib import config
from lptlib.data import build_data
from lptlib.pool import run_tasks


def _describe(cfg, data, tag):
    return tag, cfg.seed, data.signature()


def test_a_task_gets_its_config_and_the_data_of_its_seed():
    cfgs = [config.parse(seed=s, data={"n_max": 20, "imbalance": 10, "max_test_per_class": 2}) for s in (0, 1)]
    out = run_tasks(_describe, [dict(cfg=c, tag=f"t{c.seed}") for c in cfgs], workers=1)
    assert [(t, s) for t, s, _ in out] == [("t0", 0), ("t1", 1)]
    assert [sig for *_, sig in out] == [build_data(c.data, c.seed).signature() for c in cfgs]
    assert out[0][2] != out[1][2]  # each seed draws its own long-tailed train set


def test_a_task_without_a_config_is_refused_before_any_work():
    with pytest.raises(TypeError, match=r"task 0 of _describe: needs its resolved Config under 'cfg'"):
        run_tasks(_describe, [dict(config={}, tag="x")], workers=2)
