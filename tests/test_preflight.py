"""The preflight (lptlib.preflight): every model the stages train is built before the first stage trains, so a
setting that only fails when a model meets the data stops the pipeline at once; a passed configuration is
remembered."""

from __future__ import annotations

import json

import pytest

from lptlib import preflight as pf
from lptlib.config import parse

SMALL = dict(lpt={"arms": ["ladder/linear_head"]}, tea={"matrix": {"peft": ["lora"], "tea": ["none", "pea_pg_tec"]}})


def test_every_stage_is_checked():
    checks = pf.preflight(parse(**SMALL))
    assert checks == [
        "backbones.visual",
        "data.image_size for backbones.visual",
        "backbones.vision_language",
        "data.image_size for backbones.vision_language",
        "vpt_study",
        "lpt stage 1 (ladder/linear_head)",
        "lpt stage 1 (lpt_stage1)",
        "lpt stage 2",
        "tea member lora-la-none",
        "tea member lora-la-pea_pg_tec",
        "lptpp visual expert, phase 1",
        "lptpp visual expert, phase 2",
        "lptpp vision_language expert, phase 1",
        "lptpp vision_language expert, phase 2",
    ]


@pytest.mark.parametrize(
    "sections, message",
    [
        (
            dict(lpt={"share_blocks": 6}),
            r"lpt stage 1 \(ladder/linear_head\): lpt\.share_blocks \(K\) must be in \[0, 5\]",
        ),
        (
            dict(tea={"backbone": "visual", "head_init": "text"}),
            r"tea member lora-la-none: tea\.head_init: text needs a vision-language backbone",
        ),
        (
            dict(data={"image_size": 32}),
            r"data\.image_size for backbones\.visual: data\.image_size: 32, but the backbone",
        ),
    ],
    ids=["share-blocks-beyond-depth", "text-head-on-a-visual-backbone", "image-size"],
)
def test_a_setting_that_fails_late_fails_in_the_preflight(sections, message):
    merged = {k: {**SMALL.get(k, {}), **v} for k, v in sections.items()} | {
        k: v for k, v in SMALL.items() if k not in sections
    }
    with pytest.raises(pf.PreflightError, match=message):
        pf.preflight(parse(**merged))


def test_a_passed_configuration_is_not_checked_again(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LPTLIB_CACHE", str(tmp_path / "cache"))
    calls = []
    monkeypatch.setattr(pf, "repo_root", lambda: tmp_path)
    (tmp_path / "params.yaml").write_text("preset: miniature\n")
    monkeypatch.setattr(pf, "preflight", lambda cfg: calls.append(1) or ["x"])
    out = tmp_path / "sig.json"
    assert pf.main([str(out), "--params", str(tmp_path / "params.yaml")]) == 0
    assert pf.main([str(out), "--params", str(tmp_path / "params.yaml")]) == 0
    assert calls == [1] and "passed before" in capsys.readouterr().out
    assert json.loads(out.read_text())["dataset"] == "fashion_mnist_lt"
