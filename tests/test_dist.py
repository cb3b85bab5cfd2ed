"""Data-parallel training (lptlib.dist) on two CPU processes with the gloo backend gives the metrics of one
process: the same global batches, the averaged gradient equal to the one-process gradient."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lptlib.data.samplers import ClassAwareSampler, ShuffleSampler
from lptlib.dist import ShardedSampler
from lptlib.launch import rank_output

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.mark.parametrize("base", [ShuffleSampler(37, seed=3), ClassAwareSampler([0] * 20 + [1] * 12 + [2] * 5, 4)])
@pytest.mark.parametrize("world", [2, 4])
def test_sharded_sampler_splits_every_global_batch(base, world):
    batch = 8
    base.set_epoch(2)
    order = list(base)
    shards = []
    for r in range(world):
        s = ShardedSampler(base, batch, r, world)
        s.set_epoch(2)
        shards.append(list(s))
        assert len(s) == len(shards[-1])
    local = batch // world
    for step, start in enumerate(range(0, len(order), batch)):
        glob = order[start : start + batch]
        if len(glob) < world:
            continue  # dropped in distributed runs
        pieces = []
        for r in range(world):
            offset = step * local
            n = len(np.array_split(np.arange(len(glob)), world)[r])
            pieces += shards[r][offset : offset + n]
        assert pieces == glob  # rank slices of step s, in rank order, are global batch s


def test_sharded_sampler_needs_a_divisible_batch():
    with pytest.raises(ValueError, match="not divisible by the 3 processes"):
        ShardedSampler(ShuffleSampler(10), 8, 0, 3)


def test_rank_outputs():
    assert rank_output("outputs/nb/x.ipynb", 0) == "outputs/nb/x.ipynb"
    assert rank_output("outputs/nb/x.ipynb", 1) == "outputs/nb/x.rank1.ipynb"


def _run(cmd, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "LPTLIB_PROGRESS": "0"}
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"


def test_two_gloo_processes_give_the_metrics_of_one(tmp_path):
    job = ROOT / "tests" / "dist_job.py"
    _run([sys.executable, job, tmp_path / "one"], tmp_path)
    _run([BIN / "torchrun", "--nproc_per_node", "2", "--standalone", job, tmp_path / "two"], tmp_path)
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert (one.pop("world_size"), two.pop("world_size")) == (1, 2)
    assert set(one) == {
        "linear_probe/instance_balanced",
        "linear_probe/class_balanced",
        "linear_probe_la/instance_balanced",
        "crt/class_balanced",
        "vpt_deep/instance_balanced",
        "vpt_deep/class_balanced",
        "vpt_deep_replica/class_balanced",
        "lpt_stage1",
        "lpt_stage2",
    }
    for name in one:
        for key in ("overall", "many", "medium", "few", "per_class", "confusion", "val_best_epoch", "val_overall"):
            assert one[name][key] == two[name][key], (name, key)
    t1 = torch.load(tmp_path / "one" / "tuners.pt", weights_only=True)
    t2 = torch.load(tmp_path / "two" / "tuners.pt", weights_only=True)
    for name in t1:
        for k in t1[name]:
            torch.testing.assert_close(t1[name][k], t2[name][k], rtol=1e-4, atol=1e-5, msg=f"{name}: {k}")
    assert not (tmp_path / "two" / "metrics.rank1.json").exists()  # only rank 0 writes
