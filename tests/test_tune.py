"""The per-arm learning-rate grid (lptlib.tune): every compared row has an arm, the same grid and extension rule,
the winners reach the pipeline through the generated tuned layer, and every trained row reads its own rate."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lptlib import tune
from lptlib.config import compose, parse
from lptlib.models.backbones import create_backbone
from lptlib.sections import (
    LP_IB,
    LPT_STAGE1,
    MOE_ROW,
    STAGE1_CONTINUED_ROW,
    STAGE2_ROW,
    VPT_CB,
    VPT_CB_REPLICA,
    VPT_IB,
)

ROOT = Path(__file__).resolve().parents[1]


def test_every_row_a_claim_compares_has_its_own_arm():
    from lptlib.recipes.tea import ZERO_SHOT_KEY
    from lptlib.report.claims import CLAIMS, method_keys

    untrained = {ZERO_SHOT_KEY}  # zero-shot CLIP trains nothing
    shared = {VPT_CB_REPLICA}  # the A/A replica is VPT-deep's configuration: it takes VPT-deep's rate
    features = {k for k in method_keys(CLAIMS) if k.startswith("features/")}  # Table 2 reads Table 1's models
    compared = method_keys(CLAIMS) - untrained - shared - features
    # an LPT++ expert alone is its two phases; the uniform average of the experts trains nothing of its own
    assert compared - set(tune.TRAINED_BY) <= set(tune.GRID)
    assert all(set(arms) <= set(tune.GRID) for row, arms in tune.TRAINED_BY.items() if row in compared)
    trained_by = {a for row, arms in tune.TRAINED_BY.items() if row in compared for a in arms}
    assert set(tune.GRID) - compared - trained_by == set()  # and no arm is tuned that no claim reads


def test_every_arm_gets_the_same_grid_centred_on_its_schedule():
    cfg = parse()
    for arm in tune.GRID.values():
        c = tune.centre(cfg, arm)
        node = cfg
        for part in arm.schedule.split("."):
            node = getattr(node, part)
        assert c == node.lr > 0, arm.row
    assert len(tune.FACTORS) == 5 and tune.FACTORS[2] == 1.0
    assert tune.GRID[STAGE2_ROW].needs == tune.GRID[STAGE1_CONTINUED_ROW].needs == (LPT_STAGE1,)
    assert tune.GRID[MOE_ROW].needs == ("visual/phase2", "vision_language/phase2")
    assert tune.GRID["visual/phase2"].needs == ("visual/phase1",)
    rows = list(tune.GRID)
    assert all(rows.index(n) < rows.index(a.row) for a in tune.GRID.values() for n in a.needs)


def _fake_train(curve, knob="lr"):
    calls = []

    def train(arm, cfgs, base, workers, state):
        values = [c.arm_lr[arm.row] if knob == "lr" else c.arm_cosine_scale[arm.row] for c in cfgs]
        calls.append(values)
        return [{"val": curve(v)} for v in values]

    return train, calls


@pytest.mark.parametrize(
    ("curve", "chosen", "edge", "extensions"),
    [
        (lambda lr: -abs(lr - 0.05), 0.05, False, 0),  # an inside winner: five values, no extension
        (lambda lr: lr, 0.8, True, 2),  # still rising at the top edge: two extensions, still at the edge
        (lambda lr: -lr, 0.05 / 16, True, 2),  # falling: extended downwards
        (lambda lr: -abs(lr - 0.21), 0.2, False, 1),  # the edge value wins, one step beyond it is worse
        (lambda lr: 1.0, 0.05 / 4 / 2 / 2, True, 2),  # a tie everywhere goes to the smaller rate
    ],
)
def test_an_edge_winner_extends_the_grid_by_the_same_rule(monkeypatch, curve, chosen, edge, extensions):
    train, calls = _fake_train(curve)
    monkeypatch.setattr(tune, "_train", train)
    cfg = parse(vpt_study={"vpt_deep": {"lr": 0.05}})
    result, _ = tune.tune_arm(tune.GRID[VPT_CB], cfg, 1, {}, log=lambda s: None)
    assert calls[0] == [0.05 * f for f in tune.FACTORS]
    assert all(len(c) == 1 for c in calls[1:])  # one value per extension
    assert (result["chosen"], result["edge"], result["extensions"]) == (pytest.approx(chosen), edge, extensions)
    assert len(result["scores"]) == 5 + extensions


def test_the_cosine_scale_grid_runs_at_the_arms_chosen_rate(monkeypatch):
    from lptlib.recipes.lpt import build_arm
    from lptlib.sections import ARMS, SCALED_ARMS

    assert set(SCALED_ARMS) == set(ARMS) - {"ladder/linear_head"}  # a linear head under cross-entropy has no s
    seen_lr = []

    def curve(s):
        return -abs(s - 10.0)

    train, calls = _fake_train(curve, knob="cosine_scale")

    def spy(arm, cfgs, base, workers, state):
        seen_lr.extend(c.arm_lr[arm.row] for c in cfgs)
        return train(arm, cfgs, base, workers, state)

    monkeypatch.setattr(tune, "_train", spy)
    at_rate = tune.with_lr(parse(), {"ladder/cosine_head": 0.125})
    result, _ = tune.tune_arm(tune.GRID["ladder/cosine_head"], at_rate, 1, {}, log=lambda s: None, knob="cosine_scale")
    assert calls[0] == [20.0 * f for f in tune.FACTORS] and set(seen_lr) == {0.125}
    assert result["chosen"] == 10.0 and not result["edge"] and result["schedule"] == "lpt.cosine_scale"
    cfg = parse(arm_cosine_scale={"ladder/cosine_head": 10.0})
    model = build_arm(
        create_backbone(parse(backbones={"visual": {"weights": "random"}}).backbones.visual),
        10,
        cfg,
        "ladder/cosine_head",
    )
    assert model.scale == 10.0
    with pytest.raises(Exception, match="no scale of its own"):
        parse(arm_cosine_scale={"ladder/linear_head": 10.0})
    # an A-GCL arm's grid is centred on A-GCL's scale
    agcl = tune.with_lr(parse(lpt={"agcl": {"scale": 16.0}}), {"ladder/agcl": 0.125})
    result, _ = tune.tune_arm(tune.GRID["ladder/agcl"], agcl, 1, {}, log=lambda s: None, knob="cosine_scale")
    assert calls[-1][:5] == [16.0 * f for f in tune.FACTORS] and result["schedule"] == "lpt.agcl.scale"


def test_chosen_breaks_ties_towards_the_smaller_rate():
    assert tune.chosen({0.1: 0.5, 0.2: 0.7, 0.4: 0.7}) == 0.2


def _store(arms: dict[str, float]) -> dict:
    store = {
        "preset": "miniature",
        "seed": tune.TUNING_SEED,
        "rule_sha256": tune.rule_sha256(),
        "commit": "abc",
        "command": "python -m lptlib.tune run",
        "arms": {
            row: {
                "grid_sha256": tune.arm_sha256(tune.GRID[row]),
                "schedule": tune.GRID[row].schedule,
                "centre": lr,
                "scores": {repr(lr / 2): 0.5, repr(lr): 0.6, repr(lr * 2): 0.55},
                "chosen": lr,
                "edge": False,
                "extensions": 0,
                "seconds": 60.0,
                "commit": "abc",
                "command": "python -m lptlib.tune run",
            }
            for row, lr in arms.items()
        },
    }
    for row in arms:
        if tune.GRID[row].needs:
            store["arms"][row]["starts_from"] = tune.starts_from(store, tune.GRID[row])
    return store


def test_adopted_winners_are_what_the_pipeline_composes(tmp_path):
    shutil.copytree(ROOT / "presets", tmp_path / "presets", ignore=shutil.ignore_patterns("tuned"))
    store = _store({VPT_IB: 0.125, LPT_STAGE1: 0.03125, "tea/lora-la-none": 0.0125})
    (tmp_path / "presets" / "tuned").mkdir()
    (tmp_path / "presets" / "tuned" / "miniature.yaml").write_text(tune.tuned_yaml(store))
    cfg = compose({"preset": "miniature"}, root=tmp_path)
    assert cfg.arm_lr == {VPT_IB: 0.125, LPT_STAGE1: 0.03125, "tea/lora-la-none": 0.0125}
    text = tune.tuned_yaml(store)
    assert "do not edit by hand" in text and tune.rule_sha256() in text and "commit abc" in text
    store["cosine_scale"] = {
        "ladder/cosine_head": {**store["arms"][VPT_IB], "schedule": "lpt.cosine_scale", "chosen": 0.125, "lr": 0.5}
    }  # (not a store that holds: the scale grid ran at a rate the arm never chose; the table shows it anyway)
    text = tune.tuned_yaml(store)
    assert yaml.safe_load(text)["arm_cosine_scale"] == {"ladder/cosine_head": 0.125}
    table = tune.markdown(store)
    assert "(at lr 0.5)" in table
    assert "**0.125: 60.00**" in table and "Not yet tuned" in table and f"`{VPT_CB}`" in table


def test_a_store_of_another_grid_is_refused(tmp_path, capsys):
    store = _store({VPT_IB: 0.125})
    store["rule_sha256"] = "0" * 64
    (tmp_path / "tuning").mkdir()
    path = tmp_path / "tuning" / "miniature.json"
    path.write_text(json.dumps(store))
    with pytest.raises(SystemExit, match="another grid rule.*--fresh"):
        tune.main(["adopt", "--out", str(tmp_path)])
    # one arm's grid changed: that arm alone is named, with the command that re-runs it
    store = _store({VPT_IB: 0.125, LP_IB: 0.5})
    store["arms"][LP_IB]["grid_sha256"] = "0" * 64
    path.write_text(json.dumps(store))
    with pytest.raises(SystemExit, match=rf"(?s){LP_IB} \(lr\): run on another grid.*--arms {LP_IB}$"):
        tune.main(["adopt", "--out", str(tmp_path)])
    assert [p[0] for p in tune.stale(store)] == [LP_IB]
    with pytest.raises(SystemExit):
        tune.main(["run", "--arms", "ladder/bogus", "--out", str(tmp_path)])
    assert "unknown arm(s) ladder/bogus" in capsys.readouterr().err


def test_a_result_whose_starting_winner_changed_no_longer_holds():
    """Stage 2 tuned from stage 1's winner at 0.0625 is stale once stage 1's winner is another rate; so is a scale
    grid run at a rate the arm no longer chooses; an arm added to the grid leaves the others' results alone."""
    store = _store({LPT_STAGE1: 0.0625, STAGE2_ROW: 0.05})
    assert tune.stale(store) == []
    store["arms"][LPT_STAGE1]["chosen"] = 0.125
    (row, knob, why), *rest = tune.stale(store)
    assert (row, knob, rest) == (STAGE2_ROW, "lr", []) and "started from changed" in why
    store["arms"][LPT_STAGE1]["chosen"] = 0.0625
    store["cosine_scale"] = {
        LPT_STAGE1: {
            **store["arms"][LPT_STAGE1],
            "grid_sha256": tune.arm_sha256(tune.GRID[LPT_STAGE1], tune.KNOB_S),
            "lr": 0.25,
            "chosen": 20.0,
        }
    }
    assert {(r, k) for r, k, _ in tune.stale(store)} == {(LPT_STAGE1, tune.KNOB_S), (STAGE2_ROW, "lr")}
    # the arm's digest covers its definition and the rule, not the rest of the grid
    assert tune.arm_sha256(tune.GRID[VPT_IB]) != tune.arm_sha256(tune.GRID[VPT_CB])
    assert tune.arm_sha256(tune.GRID[VPT_IB]) == tune.arm_sha256(tune.Arm(**vars(tune.GRID[VPT_IB])))


def test_the_committed_tuned_layer_and_table_are_generated_from_the_committed_grid():
    """Nothing written by hand: presets/tuned/<preset>.yaml and docs/tuning.md are what `adopt` writes from
    tuning/<preset>.json (when the grid has been run)."""
    path = ROOT / "tuning" / "miniature.json"
    tuned = ROOT / "presets" / "tuned" / "miniature.yaml"
    if not path.is_file():
        assert not tuned.is_file(), "a tuned layer without the grid results it was adopted from"
        assert (ROOT / "docs" / "tuning.md").read_text() == tune.markdown(tune.empty_store("miniature"))
        return
    store = json.loads(path.read_text())
    assert store["rule_sha256"] == tune.rule_sha256(), "the grid's rule changed since it was run: re-run it"
    assert tune.stale(store) == [], "results that no longer hold: re-run them (python -m lptlib.tune run)"
    assert (ROOT / "docs" / "tuning.md").read_text() == tune.markdown(store)
    if tuned.is_file():
        assert tuned.read_text() == tune.tuned_yaml(store)
        assert yaml.safe_load(tuned.read_text())["arm_lr"] == {r: a["chosen"] for r, a in store["arms"].items()}


def test_the_grid_stage_depends_on_every_section_it_tunes():
    """`dvc repro tuning/dvc.yaml` re-runs when a schedule any arm is centred on changes (its params section)."""
    stage = yaml.safe_load((ROOT / "tuning" / "dvc.yaml").read_text())["stages"]["tune"]
    sections = {arm.schedule.split(".")[0] for arm in tune.GRID.values()}
    assert sections <= set(stage["params"]), f"tuning/dvc.yaml params lack {sorted(sections - set(stage['params']))}"


# ------------------------------------------------------------------- every trained row reads its own rate
class _Stop(Exception):
    pass


def test_every_kind_of_row_trains_with_its_arm_lr(tiny_lt, monkeypatch):
    from lptlib.recipes import lpt, tea, vpt_study

    rates = {VPT_CB: 0.11, LP_IB: 0.22, STAGE2_ROW: 0.33, STAGE1_CONTINUED_ROW: 0.44, "tea/lora-la-none": 0.55}
    random = {"weights": "random"}
    cfg = parse(seed=0, backbones={"visual": random, "vision_language": random})
    cfg = tune.with_sections(cfg, arm_lr=rates, arm_cosine_scale={})  # exactly these rates (no tuned layer)
    data = tiny_lt()
    seen = {}

    def capture(name):
        def fake(*args, **kwargs):
            schedule = kwargs.get("schedule") or next(a for a in args if type(a).__name__ == "Schedule")
            seen[name] = schedule.lr
            raise _Stop

        return fake

    monkeypatch.setattr(vpt_study, "table1_run", capture("vpt"))
    vit = create_backbone(cfg.backbones.visual)
    for replica in (False, True):
        with pytest.raises(_Stop):
            vpt_study.vpt_deep_row(vit, data, cfg, "class_balanced", None, replica=replica)
        assert seen.pop("vpt") == rates[VPT_CB]  # the A/A replica: VPT-deep's own rate
    with pytest.raises(_Stop):
        vpt_study.vpt_deep_row(vit, data, cfg, "instance_balanced", None)
    assert seen.pop("vpt") == cfg.vpt_study.vpt_deep.lr  # a row without an arm_lr key: its schedule's rate
    monkeypatch.setattr(vpt_study, "probe_run", capture("probe"))
    with pytest.raises(_Stop):
        vpt_study.probe_row({"frozen": None}, (LP_IB, "frozen", "instance_balanced", "ce"), data, cfg, test=False)
    assert seen["probe"] == rates[LP_IB]
    monkeypatch.setattr(lpt, "stage_run", capture("stage2"))
    monkeypatch.setattr(lpt, "load_stage1", lambda model, path: None)
    for pool, row in ((True, STAGE2_ROW), (False, STAGE1_CONTINUED_ROW)):
        with pytest.raises(_Stop):
            lpt.stage2_task(cfg, data, "unused.safetensors", None, pool=pool)
        assert seen.pop("stage2") == rates[row]
    clip = create_backbone(cfg.backbones.vision_language)
    for variant, lr in (("none", rates["tea/lora-la-none"]), ("pea_pg_tec", cfg.tea.lora.lr)):
        model = tea.build_model(clip, data, cfg, "lora")
        assert tea.member_run(model, data, cfg, "lora", "la", variant, None).optim.lr == lr


def test_lptpp_phases_and_scorer_train_with_their_arm_lr(tiny_lt, monkeypatch, tmp_path):
    import torch

    from lptlib.recipes import lptpp

    rates = {"visual/phase1": 0.21, "vision_language/phase2": 0.43, MOE_ROW: 0.0065}
    random = {"weights": "random"}
    cfg = parse(seed=0, backbones={"visual": random, "vision_language": random})
    cfg = tune.with_sections(cfg, arm_lr=rates, arm_cosine_scale={})
    data = tiny_lt()
    seen = []

    def fake_stage(model, data, cfg, checkpoint, schedule, resume=None, test=True):
        seen.append((schedule.lr, test))
        raise _Stop

    monkeypatch.setattr(lptpp, "train_stage", fake_stage)
    monkeypatch.setattr(lptpp, "load_expert", lambda *a, **k: None)
    for role, phase, lr in (
        ("visual", 1, rates["visual/phase1"]),
        ("visual", 2, cfg.lptpp.phase2.lr),  # no arm_lr key: the schedule's own rate
        ("vision_language", 2, rates["vision_language/phase2"]),
    ):
        with pytest.raises(_Stop):
            lptpp.train_phase(phase, role, data, cfg, tmp_path, phase1_dir=tmp_path, test=False)
        assert seen.pop() == (lr, False)
    n, c = 12, data.num_classes
    cache = lptpp.ExpertCache(
        {"train": torch.randn(n, 4)}, {"train": torch.randn(n, c)}, {"train": torch.arange(n) % c}
    )
    assert lptpp.scorer_run([cache, cache], cfg).optim.lr == rates[MOE_ROW]
    assert lptpp.scorer_run([cache], tune.with_sections(cfg, arm_lr={})).optim.lr == cfg.lptpp.scorer.lr


# ------------------------------------------------------------------------------ the real grid, tiny
TINY = [
    "data.max_test_per_class=10",
    "data.val_per_class=5",
    "data.n_max=60",
    "data.imbalance=10",
    "backbones.visual.weights=random",
    "vpt_study.vpt_deep.epochs=1",
    "lpt.stage1.epochs=1",
    "lpt.stage2.epochs=1",
]


@pytest.mark.notebook
def test_a_tiny_lptpp_grid_chains_phase1_phase2_and_the_scorer(tmp_path, monkeypatch, capsys):
    """LPT++'s arms on a tiny configuration (a 3-value grid without extensions, to keep it short): phase 2 starts
    from phase 1's winner (retrained from the stored rate in a later invocation), the scorer from both experts'
    phase-2 winners, cached on train and val only."""
    monkeypatch.setattr(tune, "FACTORS", (0.5, 1.0, 2.0))
    monkeypatch.setattr(tune, "MAX_EXTENSIONS", 0)
    tiny = [
        *TINY,
        "backbones.vision_language.weights=random",
        "lptpp.phase1.epochs=1",
        "lptpp.phase2.epochs=1",
        "lptpp.scorer.epochs=1",
        "lpt.pool_size=4",
    ]
    common = ["--out", str(tmp_path), "--workers", "1", "--set", *tiny]
    phase1 = [tune.phase_row(r, 1) for r in ("visual", "vision_language")]
    tune.main(["run", "--arms", *phase1, *common])
    with pytest.raises(SystemExit, match=r"tune that arm first \(--arms visual/phase2\)"):
        tune.main(["run", "--arms", MOE_ROW, *common])
    capsys.readouterr()
    from lptlib.recipes import lptpp

    cached, build = [], lptpp.build_cache
    monkeypatch.setattr(lptpp, "build_cache", lambda *a, **k: cached.append(k["splits"]) or build(*a, **k))
    tune.main(["run", "--arms", "visual/phase2", "vision_language/phase2", MOE_ROW, *common])
    out = capsys.readouterr()
    assert "retraining visual/phase1" in out.out and "retraining vision_language/phase1" in out.out
    assert cached == [("train", "val")] * 2  # the test split is never seen
    store = json.loads((tmp_path / "tuning" / "miniature.json").read_text())
    assert set(store["arms"]) == {*phase1, "visual/phase2", "vision_language/phase2", MOE_ROW}
    assert set(store["arms"][MOE_ROW]["starts_from"]) == {"visual/phase2", "vision_language/phase2"}
    assert all(len(a["scores"]) == 3 and all(0 <= v <= 1 for v in a["scores"].values()) for a in store["arms"].values())
    assert tune.stale(store) == []


@pytest.mark.notebook
def test_a_tiny_grid_runs_adopts_and_is_composed(tmp_path):
    """The CLI end to end on a tiny configuration: stage 1, and stage 2 (which starts from stage
    1's winner, retrained from the stored rate in a second invocation); adopt; the tuned layer composes."""
    env_cmd = [sys.executable, "-m", "lptlib.tune"]
    common = ["--out", str(tmp_path), "--workers", "1", "--set", *TINY]
    run = lambda *a: subprocess.run([*env_cmd, *a, *common], cwd=ROOT, capture_output=True, text=True)  # noqa: E731
    first = run("run", "--arms", LPT_STAGE1)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    second = run("run", "--arms", STAGE2_ROW)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]
    assert f"retraining {LPT_STAGE1}" in second.stdout
    store = json.loads((tmp_path / "tuning" / "miniature.json").read_text())
    assert set(store["arms"]) == {LPT_STAGE1, STAGE2_ROW}
    for a in store["arms"].values():
        assert 5 <= len(a["scores"]) <= 5 + tune.MAX_EXTENSIONS and all(0 <= v <= 1 for v in a["scores"].values())
    adopt = run("adopt")
    assert adopt.returncode == 0, adopt.stderr[-2000:]
    shutil.copytree(ROOT / "presets", tmp_path / "presets", dirs_exist_ok=True, ignore=shutil.ignore_patterns("tuned"))
    cfg = compose({"preset": "miniature"}, root=tmp_path)
    assert cfg.arm_lr == {r: a["chosen"] for r, a in store["arms"].items()}
    assert (tmp_path / "docs" / "tuning.md").read_text() == tune.markdown(store)
