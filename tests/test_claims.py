"""The claims table: paired t intervals, verdicts, val-only selection for Best(...), shared-seed pairing, and the
JSON / markdown / forest-plot outputs."""

import json

import matplotlib
import numpy as np
import pytest
from scipy import stats

matplotlib.use("Agg")

from matplotlib.figure import Figure  # noqa: E402

from lptlib.measure.stats import (  # noqa: E402
    adjusted_verdict,
    format_mean_std,
    holm,
    min_detectable_effect,
    paired_interval,
    paired_p_value,
    seed_summary,
)
from lptlib.report.claims import (  # noqa: E402
    CLAIMS,
    CONTROL_EXPECTED,
    METRICS,
    Best,
    Claim,
    claims_json,
    claims_markdown,
    control_failures,
    evaluate_claims,
    method_keys,
    plot_claims,
)

# The method keys the pipeline produces (documented in the claims brief); CLAIMS may use no other.
DOCUMENTED_KEYS = {
    "linear_probe/instance_balanced",
    "linear_probe/class_balanced",
    "linear_probe_la/instance_balanced",
    "crt/class_balanced",
    "vpt_deep/instance_balanced",
    "vpt_deep/class_balanced",
    "vpt_deep_replica/class_balanced",
    "ladder/linear_head",
    "ladder/cosine_head",
    "ladder/head_dropout",
    "ladder/dual_sampling",
    "ladder/agcl",
    "lpt_stage1",
    "lpt_stage1_without/agcl",
    "lpt_stage1_without/dual_sampling",
    "lpt_stage1_without/cosine_head",
    "agcl_part/cloud",
    "agcl_part/no_cloud",
    "lpt_stage1_continued",
    "lpt_stage2",
    *(f"tea/{peft}-la-{variant}" for peft in ("vpt_deep", "adaptformer", "lora") for variant in ("none", "pea_pg_tec")),
    "zero_shot_clip",
    "lptpp/visual",
    "lptpp/vision_language",
    "lptpp/uniform",
    "lptpp/moe",
    "features/frozen",  # LPT Table 2 per feature extractor (metrics/vpt_study_features)
    "features/vpt_deep/instance_balanced",
    "features/vpt_deep/class_balanced",
}


def row(overall, val=None, **groups):
    """A metrics row; many/medium/few default to `overall`."""
    r = {"overall": overall, **{g: groups.get(g, overall) for g in ("many", "medium", "few")}}
    if val is not None:
        r["val_overall"] = val
    return r


def method(values, seeds=None, val=None):
    seeds = range(len(values)) if seeds is None else seeds
    return {s: row(v, val) for s, v in zip(seeds, values)}


def claim(a="m/a", b="m/b", metric="overall", cid="c"):
    return Claim(cid, "test", f"{a} beats {b}", a, b, metric, "not published here")


def one(results, c=None, confidence=0.95):
    return evaluate_claims(results, (c or claim(),), confidence)[0]


# ---------------------------------------------------------------------------------------------------------------
# paired_interval
# ---------------------------------------------------------------------------------------------------------------


def test_paired_interval_matches_scipy_and_a_hand_computation():
    rng = np.random.default_rng(0)
    a = rng.uniform(0.4, 0.8, 6)
    b = a - rng.normal(0.02, 0.03, 6)
    out = paired_interval(a, b)
    ci = stats.ttest_rel(a, b).confidence_interval(0.95)
    assert out["low"] == pytest.approx(ci.low, abs=1e-12) and out["high"] == pytest.approx(ci.high, abs=1e-12)

    d = a - b
    n = len(d)
    half = stats.t.ppf(0.975, n - 1) * d.std(ddof=1) / np.sqrt(n)
    assert out["n"] == n
    assert out["mean"] == pytest.approx(d.mean()) and out["std"] == pytest.approx(d.std(ddof=1))
    assert (out["low"], out["high"]) == pytest.approx((d.mean() - half, d.mean() + half))
    assert out["width"] == pytest.approx(out["high"] - out["low"])
    assert out["diffs"] == pytest.approx(list(d))

    ci90 = stats.ttest_rel(a, b).confidence_interval(0.90)
    out90 = paired_interval(a, b, confidence=0.90)
    assert (out90["low"], out90["high"]) == pytest.approx((ci90.low, ci90.high))


def test_paired_interval_with_fewer_than_two_values_has_no_bounds():
    out = paired_interval([0.7], [0.6])
    assert out["n"] == 1 and out["mean"] == pytest.approx(0.1)
    assert out["low"] is None and out["high"] is None and out["width"] is None and out["std"] is None
    empty = paired_interval([], [])
    assert empty["n"] == 0 and empty["mean"] is None and empty["low"] is None


def test_paired_interval_rejects_unpaired_input():
    with pytest.raises(ValueError, match="one length"):
        paired_interval([0.1, 0.2], [0.1])
    with pytest.raises(ValueError, match="confidence"):
        paired_interval([0.1, 0.2], [0.1, 0.3], confidence=95)


# ---------------------------------------------------------------------------------------------------------------
# Verdicts
# ---------------------------------------------------------------------------------------------------------------


BASE = [0.60, 0.62, 0.59, 0.61, 0.63]


def test_supported():
    r = one({"m/a": method([x + 0.05 for x in BASE]), "m/b": method(BASE)})
    assert r["verdict"] == "supported" and r["n"] == 5
    assert r["mean"] == pytest.approx(5.0) and r["low"] == pytest.approx(5.0)  # percentage points; zero spread
    assert r["diffs"] == pytest.approx([5.0] * 5)


def test_contradicted():
    deltas = [-0.03, -0.04, -0.02, -0.05, -0.03]
    r = one({"m/a": method([x + d for x, d in zip(BASE, deltas)]), "m/b": method(BASE)})
    assert r["verdict"] == "contradicted" and r["high"] < 0
    assert r["mean"] == pytest.approx(100 * np.mean(deltas))


def test_inconclusive_when_the_interval_contains_zero_or_one_seed():
    deltas = [0.03, -0.02, 0.01, -0.03, 0.02]
    r = one({"m/a": method([x + d for x, d in zip(BASE, deltas)]), "m/b": method(BASE)})
    assert r["verdict"] == "inconclusive" and r["low"] < 0 < r["high"]
    single = one({"m/a": method([0.9]), "m/b": method([0.1])})
    assert single["verdict"] == "inconclusive" and single["n"] == 1 and single["low"] is None
    assert single["mean"] == pytest.approx(80.0)


def test_not_run_when_a_method_is_absent():
    r = one({"m/a": method(BASE)})
    assert r["verdict"] == "not run" and r["n"] == 0 and r["mean"] is None and "m/b" in r["note"]
    rows = evaluate_claims({})  # the default set against no results at all: every claim reported, none raise
    assert len(rows) == len(CLAIMS) and {r["verdict"] for r in rows} == {"not run"}


def test_pairing_detects_what_an_unpaired_comparison_cannot():
    # Seeds shift both methods a lot (split, init); a beats b by about 1 point on every seed.
    seed_effect = np.array([0.50, 0.58, 0.66, 0.54, 0.62])
    b = seed_effect
    a = seed_effect + np.array([0.010, 0.012, 0.009, 0.011, 0.010])
    unpaired = stats.ttest_ind(a, b).confidence_interval(0.95)
    assert unpaired.low < 0 < unpaired.high  # an unpaired test sees nothing
    r = one({"m/a": method(a), "m/b": method(b)})
    assert r["verdict"] == "supported" and r["low"] > 0


def test_only_shared_seeds_are_paired():
    results = {"m/a": method([0.7, 0.8, 0.9], seeds=[0, 1, 2]), "m/b": method([0.5, 0.6, 0.65], seeds=[1, 2, 3])}
    r = one(results)
    assert r["seeds"] == [1, 2] and r["n"] == 2
    assert r["diffs"] == pytest.approx([100 * (0.8 - 0.5), 100 * (0.9 - 0.6)])
    disjoint = one({"m/a": method([0.7], seeds=[0]), "m/b": method([0.5], seeds=[1])})
    assert disjoint["n"] == 0 and disjoint["verdict"] == "inconclusive"


def test_the_claims_metric_is_used():
    results = {
        "m/a": {s: row(0.6, few=0.5 + 0.01 * s + 0.1) for s in range(3)},
        "m/b": {s: row(0.6, few=0.5 + 0.01 * s) for s in range(3)},
    }
    assert one(results, claim(metric="overall"))["verdict"] == "inconclusive"
    few = one(results, claim(metric="few"))
    assert few["verdict"] == "supported" and few["mean"] == pytest.approx(10.0)


# ---------------------------------------------------------------------------------------------------------------
# Best(...) is chosen on val, never on test
# ---------------------------------------------------------------------------------------------------------------


def test_best_chooses_by_val_not_by_test():
    # "x/test_best" wins on test but loses on val; "x/val_best" the reverse. The MoE beats only the val choice.
    results = {
        "x/test_best": method([0.80, 0.81, 0.79], val=0.60),
        "x/val_best": method([0.70, 0.71, 0.69], val=0.65),
        "x/moe": method([0.75, 0.76, 0.745]),
    }
    c = claim("x/moe", Best(("x/test_best", "x/val_best")))
    r = one(results, c)
    assert r["b"] == "x/val_best" and r["b_spec"] == "Best(x/test_best, x/val_best)"
    assert r["verdict"] == "supported"
    assert "best on val: `x/val_best`" in claims_markdown([r])


def test_best_uses_the_seeds_all_candidates_share():
    # On seed 3 (only "x/p" has it) "x/p" has a huge val score; over the shared seeds {0, 1, 2} "x/q" is better.
    results = {
        "x/p": {**method([0.5] * 3, val=0.60), 3: row(0.5, val=1.0)},
        "x/q": method([0.5] * 3, val=0.62),
        "x/moe": method([0.6] * 3),
    }
    assert one(results, claim("x/moe", Best(("x/p", "x/q"))))["b"] == "x/q"


def test_best_with_an_absent_candidate_is_not_run():
    results = {"x/p": method(BASE, val=0.6), "x/moe": method(BASE)}
    r = one(results, claim("x/moe", Best(("x/p", "x/q"))))
    assert r["verdict"] == "not run" and r["b"] is None and "x/q" in r["note"]


def test_best_needs_val_accuracy():
    results = {"x/p": method(BASE), "x/q": method(BASE, val=0.6), "x/moe": method(BASE)}
    with pytest.raises(ValueError, match=r"x/p.*val_overall"):
        one(results, claim("x/moe", Best(("x/p", "x/q"))))


# ---------------------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------------------


def test_a_row_without_the_metric_raises_naming_the_key():
    results = {"m/a": method(BASE), "m/b": method(BASE)}
    del results["m/b"][2]["few"]
    with pytest.raises(ValueError, match=r"m/b.*few"):
        one(results, claim(metric="few"))


def test_an_accuracy_outside_0_1_raises():
    results = {"m/a": method([62.0, 63.0]), "m/b": method([0.6, 0.6])}
    with pytest.raises(ValueError, match=r"m/a.*\[0, 1\]"):
        one(results)


def test_claim_validation():
    with pytest.raises(ValueError, match="metric"):
        claim(metric="top5")
    with pytest.raises(ValueError):
        Best(())
    with pytest.raises(ValueError, match="duplicate"):
        evaluate_claims({}, (claim(), claim()))


# ---------------------------------------------------------------------------------------------------------------
# The default claims and the outputs
# ---------------------------------------------------------------------------------------------------------------


def full_results(seeds=(0, 1, 2, 3, 4)):
    rng = np.random.default_rng(1)
    return {
        k: {s: {m: float(rng.uniform(0.3, 0.9)) for m in (*METRICS, "val_overall")} for s in seeds}
        for k in sorted(DOCUMENTED_KEYS)
    }


def test_every_method_key_in_claims_is_documented():
    unknown = method_keys(CLAIMS) - DOCUMENTED_KEYS
    assert not unknown, f"CLAIMS uses undocumented method keys (typo?): {sorted(unknown)}"


def test_default_claims_cover_the_brief():
    ids = [c.id for c in CLAIMS]
    assert len(ids) == len(set(ids))
    by_id = {c.id: c for c in CLAIMS}
    assert {"vpt_vs_lp_ib_overall", "vpt_vs_lp_ib_many", "vpt_vs_lp_ib_medium", "vpt_vs_lp_ib_few"} <= set(ids)
    control = {c.id: c for c in CLAIMS if c.group == "control"}
    assert set(control) == set(CONTROL_EXPECTED)
    assert set(control) == {"control_la_probe_few", "control_la_probe_overall", "control_aa_vpt_cb"}
    aa = control["control_aa_vpt_cb"]
    for cid, metric in (("control_la_probe_few", "few"), ("control_la_probe_overall", "overall")):
        positive = control[cid]
        assert positive.metric == metric and CONTROL_EXPECTED[cid] == "supported"
        assert (positive.a, positive.b) == ("linear_probe_la/instance_balanced", "linear_probe/instance_balanced")
    assert aa.metric == "overall" and CONTROL_EXPECTED["control_aa_vpt_cb"] == "inconclusive"
    assert (aa.a, aa.b) == ("vpt_deep/class_balanced", "vpt_deep_replica/class_balanced")
    assert all(c.family == "controls" for c in control.values())
    assert by_id["lptpp_moe_vs_best_expert_overall"].b == Best(("lptpp/visual", "lptpp/vision_language"))
    ladder = ["ladder/linear_head", "ladder/cosine_head", "ladder/head_dropout", "ladder/dual_sampling"]
    ladder += ["ladder/agcl", "lpt_stage1"]
    pairs = {(c.a, c.b) for c in CLAIMS if c.metric == "overall"}
    assert all((hi, lo) in pairs for lo, hi in zip(ladder, ladder[1:]))
    assert ("lpt_stage2", "lpt_stage1_continued") in pairs  # the pool against the same extra epochs
    loo = {c.b for c in CLAIMS if c.id.startswith("loo_") and c.metric == "overall"}
    assert loo == {f"lpt_stage1_without/{p}" for p in ("agcl", "dual_sampling", "cosine_head")}
    assert {c.family for c in CLAIMS if c.group in ("LPT ladder", "LPT ablations", "Prior correction")} == {"ablations"}
    assert (
        by_id["lpt_vs_vpt_cb_overall"].family == "claims" and by_id["lpt_vs_vpt_cb_posthoc"].metric == "posthoc_overall"
    )
    for peft in ("vpt_deep", "adaptformer", "lora"):
        for m in ("few", "overall"):
            assert by_id[f"tea_{peft}_{m}"].a == f"tea/{peft}-la-pea_pg_tec"
    for c in CLAIMS:
        assert c.paper and "/work" not in c.paper and ".md" not in c.paper


def test_claims_json_is_json_safe():
    rows = evaluate_claims(full_results())
    out = claims_json(rows, 0.95)
    text = json.dumps(out, allow_nan=False)
    back = json.loads(text)
    assert back["confidence"] == 0.95 and back["units"].startswith("how much a beats b")
    assert len(back["claims"]) == len(CLAIMS)
    assert all(r["verdict"] in {"supported", "contradicted", "inconclusive", "unmeasurable"} for r in back["claims"])
    assert all(r["raw_verdict"] in {"supported", "contradicted", "inconclusive"} for r in back["claims"])
    json.dumps(claims_json(evaluate_claims({})), allow_nan=False)  # "not run" rows too
    with pytest.raises(ValueError, match="confidence"):
        claims_json(rows, 0.9)


def test_claims_markdown_lists_every_claim():
    rows = evaluate_claims({k: v for k, v in full_results().items() if not k.startswith("tea/")})
    md = claims_markdown(rows)
    lines = md.strip().splitlines()
    assert lines[0] == (
        "| Claim | metric | paper | ours: mean [low, high] (n seeds) | p: raw / Holm | detectable (80% power) "
        "| raw verdict | verdict |"
    )
    assert len(lines) == 2 + len(CLAIMS)
    assert all(c.text in md for c in CLAIMS)
    assert "(5 seeds)" in md and "not run" in md
    r = rows[0]
    assert f"{r['mean']:+.2f} [{r['low']:+.2f}, {r['high']:+.2f}] (5 seeds)" in md


def test_plot_claims_has_one_tick_per_claim():
    results = full_results()
    del results["lptpp/moe"]
    results["lptpp/uniform"] = {0: results["lptpp/uniform"][0]}  # one seed: a dot without a bar
    rows = evaluate_claims(results)
    fig = plot_claims(rows)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert len(ax.get_yticks()) == len(CLAIMS)
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[0] == f"{CLAIMS[0].text} [{CLAIMS[0].metric}]"
    assert "points" in ax.get_xlabel() and "95% t interval" in ax.get_xlabel()
    assert {t.get_text() for t in ax.get_legend().get_texts()} == {
        "supported",
        "contradicted",
        "inconclusive",
        "unmeasurable",
        "not run",
    }


def test_seed_summary_and_format_mean_std():
    s = seed_summary([0.6, 0.62, 0.64])
    assert s["n"] == 3 and s["mean"] == pytest.approx(0.62) and s["std"] == pytest.approx(0.02)
    assert seed_summary([0.5]) == {"mean": 0.5, "std": 0.0, "n": 1}
    assert format_mean_std([0.6, 0.62, 0.64]) == "62.00 ± 2.00"
    assert format_mean_std([0.6261]) == "62.61"
    assert format_mean_std([0.6, 0.62, 0.64], scale=1, digits=3) == "0.620 ± 0.020"
    with pytest.raises(ValueError):
        seed_summary([])


# ---------------------------------------------------------------------------------------------------------------
# Multiplicity (Holm), the paired t-test, sensitivity (minimum detectable effect)
# ---------------------------------------------------------------------------------------------------------------


def test_paired_p_value_matches_scipy():
    rng = np.random.default_rng(3)
    for n in (2, 3, 5, 8):
        a, b = rng.uniform(0.4, 0.8, n), rng.uniform(0.4, 0.8, n)
        d = a - b
        assert paired_p_value(d.mean(), d.std(ddof=1), n) == pytest.approx(stats.ttest_rel(a, b).pvalue, rel=1e-10)
    assert paired_p_value(0.5, None, 1) is None and paired_p_value(0.5, 0.1, 1) is None
    assert paired_p_value(0.5, 0.0, 3) == 0.0 and paired_p_value(0.0, 0.0, 3) == 1.0


def _holm_reference(ps):
    """Holm's procedure by its definition: reject H_(1..k) while p_(j) <= alpha / (m - j + 1); the adjusted p of
    H_(i) is the smallest alpha at which it is rejected (searched on a fine grid of alphas)."""
    m = len(ps)
    order = np.argsort(ps, kind="stable")
    out = [None] * m
    for alpha in np.linspace(0, 1, 20001):
        for j, i in enumerate(order):
            if ps[i] > alpha / (m - j):
                break
            if out[i] is None:
                out[i] = alpha
    return [1.0 if o is None else o for o in out]


def test_holm_matches_its_definition_and_skips_untested_entries():
    ps = [0.01, 0.04, 0.03, 0.005, 0.5, 0.2]
    got = holm(ps)
    assert got == pytest.approx(_holm_reference(ps), abs=1e-4)
    assert got == pytest.approx([0.05, 0.12, 0.12, 0.03, 0.5, 0.4])  # by hand: 6p, 5p, max(.., 4p), ...
    skipped = holm([0.01, None, 0.04])  # an untested entry neither counts nor gets a p-value
    assert skipped[1] is None and skipped[0] == pytest.approx(0.02) and skipped[2] == pytest.approx(0.04)
    assert holm([]) == [] and holm([0.3]) == [0.3]
    assert holm([0.6, 0.6]) == [1.0, 1.0]  # capped at 1
    with pytest.raises(ValueError, match="p-value"):
        holm([1.5])


def test_adjusted_verdict():
    assert adjusted_verdict(2.0, 0.01, 0.05) == "supported"
    assert adjusted_verdict(-2.0, 0.01, 0.05) == "contradicted"
    assert adjusted_verdict(2.0, 0.05, 0.05) == "inconclusive"
    assert adjusted_verdict(None, None, 0.05) == "inconclusive"


def test_min_detectable_effect_has_the_stated_power_by_simulation():
    rng = np.random.default_rng(0)
    for n, sd in ((5, 2.0), (3, 1.0), (2, 0.5)):
        mde = min_detectable_effect(sd, n)
        d = rng.normal(mde, sd, size=(40000, n))
        p = stats.ttest_1samp(d, 0.0, axis=1).pvalue
        assert (p < 0.05).mean() == pytest.approx(0.8, abs=0.01)
    # the normal approximation (z_{1-a/2} + z_power) sd / sqrt(n) is a lower bound for small n
    assert min_detectable_effect(1.0, 5) > (stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) / np.sqrt(5)
    assert min_detectable_effect(1.0, 5) == pytest.approx(2 * min_detectable_effect(0.5, 5))
    assert min_detectable_effect(None, 5) is None and min_detectable_effect(1.0, 1) is None
    assert min_detectable_effect(0.0, 4) == 0.0
    for n in range(2, 13):  # any spread, tiny (equal differences up to rounding) or huge: finite, linear in it
        unit = min_detectable_effect(1.0, n)
        assert np.isfinite(unit) and unit > 0
        assert min_detectable_effect(1e-14, n) == pytest.approx(1e-14 * unit)
        assert min_detectable_effect(1e9, n) == pytest.approx(1e9 * unit)
    with pytest.raises(ValueError, match="power"):
        min_detectable_effect(1.0, 5, power=1.0)


def test_holm_runs_over_each_family_and_sets_the_verdict():
    seeds = range(5)
    # three claims whose raw intervals exclude 0 with p close to 0.02-0.03, and one strong one
    rng = np.random.default_rng(7)
    base = 0.6 + rng.normal(0, 0.01, 5)
    results = {"m/b": method(base)}
    shifts = {"m/weak1": 0.011, "m/weak2": 0.012, "m/strong": 0.2}
    noise = {k: rng.normal(0, 0.008, 5) for k in shifts}
    for k, d in shifts.items():
        results[k] = method(base + d + noise[k])
    claims = [claim(k, "m/b", cid=k) for k in shifts]
    control = Claim("ctl", "control", "control", "m/weak1", "m/b", "overall", "control")
    rows = {r["id"]: r for r in evaluate_claims(results, (*claims, control))}
    ps = [rows[k]["p"] for k in shifts]
    assert all(r["family"] == "claims" for k, r in rows.items() if k != "ctl") and rows["ctl"]["family"] == "controls"
    assert [rows[k]["p_adjusted"] for k in shifts] == pytest.approx(holm(ps))
    assert rows["ctl"]["p_adjusted"] == pytest.approx(rows["ctl"]["p"])  # its own family of one
    for k in shifts:
        r = rows[k]
        assert r["raw_verdict"] == one(results, claim(k, "m/b"))["raw_verdict"]
        assert r["verdict"] == ("supported" if r["p_adjusted"] < 0.05 else "inconclusive")
        assert r["p"] == pytest.approx(
            stats.ttest_rel(
                [results[k][s]["overall"] for s in seeds], [results["m/b"][s]["overall"] for s in seeds]
            ).pvalue
        )
    assert rows["m/strong"]["verdict"] == "supported"


def test_raw_verdict_and_p_value_agree_for_one_claim():
    rng = np.random.default_rng(11)
    for _ in range(30):
        b = 0.6 + rng.normal(0, 0.02, 5)
        results = {"m/a": method(b + rng.normal(0.01, 0.02, 5)), "m/b": method(b)}
        r = one(results)
        assert r["p_adjusted"] == r["p"]
        assert (r["raw_verdict"] != "inconclusive") == (r["p"] < 0.05)
        assert r["verdict"] == r["raw_verdict"]


def test_unmeasurable_where_the_seeds_cannot_detect_the_papers_effect():
    rng = np.random.default_rng(5)
    b = 0.6 + rng.normal(0, 0.02, 5)
    results = {"m/a": method(b + rng.normal(0.0, 0.05, 5)), "m/b": method(b)}
    c = Claim("c", "test", "a beats b", "m/a", "m/b", "overall", "+1.0 (paper)", 1.0)
    r = one(results, c)
    assert r["raw_verdict"] == "inconclusive" and r["mde"] > 1.0
    assert r["measurable"] is False and r["verdict"] == "unmeasurable"
    big = Claim("c", "test", "a beats b", "m/a", "m/b", "overall", "+50 (paper)", 50.0)
    assert one(results, big)["measurable"] is True and one(results, big)["verdict"] == "inconclusive"
    assert one(results)["measurable"] is None  # no published effect: no flag
    assert one(results)["mde"] == pytest.approx(min_detectable_effect(one(results)["std"], 5))


def test_gamma_is_lower_is_better():
    results = {
        "features/x": {s: {"gamma": 0.30 + 0.001 * s, "knn_acc": 0.6} for s in range(4)},
        "features/y": {s: {"gamma": 0.35 - 0.001 * s, "knn_acc": 0.5} for s in range(4)},
    }
    g = one(results, Claim("g", "test", "x is more separable", "features/x", "features/y", "gamma", "lower"))
    assert g["mean"] == pytest.approx(np.mean([100 * (0.05 - 0.002 * s) for s in range(4)]))  # 100 (y - x)
    assert g["verdict"] == "supported"
    k = one(results, Claim("k", "test", "x beats y on k-NN", "features/x", "features/y", "knn_acc", "+1.1", 1.1))
    assert k["mean"] == pytest.approx(10.0) and k["verdict"] == "supported"
    results["features/x"][0]["gamma"] = 1.7  # a ratio may exceed 1 ...
    one(results, Claim("g", "test", "t", "features/x", "features/y", "gamma", "lower"))
    results["features/x"][0]["gamma"] = float("nan")  # ... but must be a finite number >= 0
    with pytest.raises(ValueError, match="ratio"):
        one(results, Claim("g", "test", "t", "features/x", "features/y", "gamma", "lower"))


def test_the_missing_claims_are_in_the_table():
    by_id = {c.id: c for c in CLAIMS}
    assert (by_id["lpt_vs_crt_overall"].a, by_id["lpt_vs_crt_overall"].b) == ("lpt_stage2", "crt/class_balanced")
    assert by_id["lpt_vs_la_probe_overall"].b == "linear_probe_la/instance_balanced"
    assert by_id["table2_knn_acc"].paper_effect == 1.1 and by_id["table2_knn_acc"].metric == "knn_acc"
    assert by_id["table2_gamma"].metric == "gamma" and by_id["table2_gamma"].b == "features/frozen"
    published = {c.id: c.paper_effect for c in CLAIMS if c.paper_effect is not None}
    assert published["vpt_vs_lp_ib_few"] == 4.52 and published["vpt_vs_lp_cb_few"] == 8.67
    for cid, effect in published.items():  # the number is the one the paper column quotes
        assert f"{effect:+.2f}".rstrip("0").rstrip(".") in by_id[cid].paper or f"{effect:+.1f}" in by_id[cid].paper


def test_control_failures_name_a_control_with_the_wrong_verdict():
    results = full_results()
    rows = evaluate_claims(results)
    by_id = {r["id"]: r for r in rows}
    by_id["control_la_probe_few"]["verdict"] = "inconclusive"
    by_id["control_la_probe_overall"]["verdict"] = "supported"
    by_id["control_aa_vpt_cb"]["verdict"] = "supported"
    failures = control_failures(rows)
    assert len(failures) == 2 and "control_la_probe_few" in failures[0] and "not supported" in failures[0]
    assert "control_aa_vpt_cb" in failures[1] and "not inconclusive" in failures[1]
    by_id["control_la_probe_few"]["verdict"] = "supported"
    by_id["control_aa_vpt_cb"]["verdict"] = "not run"
    assert control_failures(rows) == []


def test_a_metric_an_older_file_lacks_makes_its_claim_not_run():
    results = full_results()
    for per_seed in results["lpt_stage2"].values():
        per_seed.pop("posthoc_overall")
    rows = {r["id"]: r for r in evaluate_claims(results)}
    assert rows["lpt_vs_vpt_cb_posthoc"]["verdict"] == "not run"
    assert "lpt_stage2 predates 'posthoc_overall'" in rows["lpt_vs_vpt_cb_posthoc"]["note"]
    assert rows["lpt_vs_vpt_cb_overall"]["verdict"] != "not run"
