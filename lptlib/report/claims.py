"""The claims table: each paper claim ("a beats b" on one metric) tested on several seeds per method.

Input: ``results[method_key][seed] = {"overall", "many", "medium", "few", "val_overall"}`` (accuracies in [0, 1]),
and for feature extractors (LPT Table 2) ``{"gamma", "knn_acc"}``. Per claim the two sides are paired on the seeds
they share; the per-seed differences, "how much a beats b" (100 * (a - b) for accuracies, in percentage points;
100 * (b - a) for gamma, where lower is better), give a mean, a Student t interval and a two-sided paired t-test.

Verdicts. The *raw* verdict reads the interval alone: "supported" (above 0), "contradicted" (below 0),
"inconclusive" (contains 0, or fewer than 2 seeds) or "not run" (a method key is absent from the results). The
*verdict* of the table corrects for multiplicity: Holm's step-down adjustment of the p-values over the claim's
family (`FAMILIES`: every claim of the table is one family; the controls, which check the testbed, another), at
level 1 - confidence. Where that leaves a claim inconclusive and the smallest effect the seeds could detect
(80% power, from the observed spread) exceeds the paper's own effect, the verdict is "unmeasurable": the seeds
could not have shown the paper's effect, so "inconclusive" says nothing about it.
Where a side is `Best(...)`, it is resolved on *val* accuracy (``val_overall``), never on test accuracy.

    rows = evaluate_claims(results)
    claims_json(rows); claims_markdown(rows); plot_claims(rows)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from lptlib.measure.stats import (
    adjusted_verdict,
    check_confidence,
    diff_interval,
    holm,
    min_detectable_effect,
    paired_p_value,
    verdict,
)
from lptlib.recipes.lpt import (
    LADDER,
    STAGE1_CONTINUED_ROW,
    STAGE1_ROW,
    STAGE2_ROW,
    agcl_part_row,
    ladder_row,
    loo_row,
)
from lptlib.recipes.lptpp import MOE_ROW, UNIFORM_ROW, expert_row
from lptlib.recipes.tea import member_name, method_key
from lptlib.recipes.vpt_study import (
    CRT_CB,
    FROZEN,
    LP_CB,
    LP_IB,
    LP_LA_IB,
    VPT_CB,
    VPT_CB_REPLICA,
    VPT_IB,
    feature_key,
)
from lptlib.sections import PEFT

#: accuracies (in [0, 1]; higher is better) and LPT Table 2's feature ratio gamma (lower is better)
#: and the overall accuracy after a post-hoc prior correction chosen on val (`lptlib.measure.metrics.prior_corrected`)
METRICS = ("overall", "many", "medium", "few", "knn_acc", "gamma", "posthoc_overall")
LOWER_IS_BETTER = frozenset({"gamma"})
#: metrics that metrics files written before them lack: a claim on one of them is "not run" for such a file
LATER_METRICS = frozenset({"posthoc_overall"})
VAL_METRIC = "val_overall"
UNITS = "how much a beats b: percentage points, 100 (a - b), for accuracies; 100 (b - a) for gamma (lower is better)"
POWER = 0.8  # the power at which each claim's minimum detectable effect is given
#: Holm's adjustment runs over each family separately: the claims of the papers; our attribution of LPT's gap to
#: its parts (the ladder, leave-one-out, A-GCL's parts, the prior correction); and the testbed's controls
CONTROL = "control"
FAMILIES = ("claims", "ablations", "controls")
VERDICTS_ADJUSTED = ("supported", "contradicted", "inconclusive", "unmeasurable", "not run")
VERDICT_COLORS = {
    "supported": "#1b9e77",
    "contradicted": "#d95f02",
    "inconclusive": "#7570b3",
    "unmeasurable": "#e7a1c6",
    "not run": "#b0b0b0",
}

Results = Mapping[str, Mapping[int, Mapping[str, float]]]


# ---------------------------------------------------------------------------------------------------------------
# Claims
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Best:
    """The candidate with the highest mean val accuracy (``val_overall``) over the seeds all candidates share.

    Test accuracy never takes part; a tie goes to the first candidate.
    """

    keys: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.keys or not all(isinstance(k, str) for k in self.keys):
            raise ValueError(f"Best needs a non-empty tuple of method keys, got {self.keys!r}")

    def __str__(self) -> str:
        return f"Best({', '.join(self.keys)})"


Side = str | Best


@dataclass(frozen=True)
class Claim:
    """One claim "a beats b" on `metric`, with the paper's own figure (`paper`) as a short string and, where the paper
    gives one, its effect as a number in the claim's units (`paper_effect`, e.g. +4.52 points)."""

    id: str
    group: str
    text: str
    a: Side
    b: Side
    metric: str
    paper: str
    paper_effect: float | None = None

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"claim {self.id!r}: metric must be one of {METRICS}, got {self.metric!r}")
        for side in (self.a, self.b):
            if not isinstance(side, str | Best):
                raise TypeError(f"claim {self.id!r}: a side is a method key or Best(...), got {side!r}")

    @property
    def family(self) -> str:
        """The family Holm's adjustment runs over (`FAMILIES`)."""
        if self.group == CONTROL:
            return "controls"
        return "ablations" if self.group in ABLATION_GROUPS else "claims"

    def keys(self) -> tuple[str, ...]:
        """Every method key the claim reads (both sides, all Best candidates)."""
        return tuple(k for side in (self.a, self.b) for k in ((side,) if isinstance(side, str) else side.keys))


#: what each control must come out as (its Holm-adjusted verdict within the controls' family), or the testbed is
#: too noisy (the positive control) or biased (the A/A control) for the claims' verdicts to mean what they say
CONTROL_EXPECTED = {
    "control_la_probe_few": "supported",
    "control_la_probe_overall": "supported",
    "control_aa_vpt_cb": "inconclusive",
}


def control_failures(rows: Sequence[dict]) -> list[str]:
    """One sentence per control row whose verdict is not the one it must have (`CONTROL_EXPECTED`; rows not run
    are skipped)."""
    out = []
    for r in rows:
        want = CONTROL_EXPECTED.get(r["id"])
        if want is not None and r["verdict"] not in (want, "not run"):
            out.append(f"the control {r['id']!r} ({r['text']}) came out {r['verdict']}, not {want}")
    return out


def method_keys(claims: Iterable[Claim]) -> set[str]:
    """The method keys a set of claims needs results for."""
    return {k for c in claims for k in c.keys()}


_VPT_STUDY = "VPT study"
_LADDER = "LPT ladder"
_ABLATION = "LPT ablations"
_POSTHOC = "Prior correction"
_LPT = "LPT"
ABLATION_GROUPS = frozenset({_LADDER, _ABLATION, _POSTHOC})
_TEA = "TEA"
_LPTPP = "LPT++"
_T1 = "Places-LT, LPT Table 1"
_NP = "not published here"
_TEA_FEW = "improves few-shot (TEA abstract; no figure)"
_TEA_ALL = "improves various PEFT methods (TEA abstract; no figure)"
_LPTPP_MOE = "MoE scorer reweights the experts adaptively (LPT++ abstract; no figure)"
_EXPERTS = Best((expert_row("visual"), expert_row("vision_language")))

CLAIMS: tuple[Claim, ...] = (
    # --- the preliminary VPT study (LPT Sec. 3) ---
    *(
        Claim(
            f"vpt_vs_lp_ib_{m}",
            _VPT_STUDY,
            "VPT-deep beats linear probing (instance-balanced sampling)",
            VPT_IB,
            LP_IB,
            m,
            paper,
            effect,
        )
        for m, paper, effect in (
            ("overall", f"{_NP} (VPT-deep 37.52% overall; {_T1})", None),
            ("many", f"+3.94 ({_T1})", 3.94),
            ("medium", f"+3.33 ({_T1})", 3.33),
            ("few", f"+4.52 ({_T1})", 4.52),
        )
    ),
    *(
        Claim(
            f"vpt_vs_lp_cb_{m}",
            _VPT_STUDY,
            "VPT-deep beats linear probing (class-balanced sampling)",
            VPT_CB,
            LP_CB,
            m,
            paper,
            effect,
        )
        for m, paper, effect in (
            ("overall", f"{_NP} (VPT-deep 44.17% overall; {_T1})", None),
            ("few", f"+8.67 ({_T1})", 8.67),
        )
    ),
    *(
        Claim(
            f"lp_cb_vs_ib_{m}",
            _VPT_STUDY,
            "Class-balanced sampling beats instance-balanced sampling (linear probing)",
            LP_CB,
            LP_IB,
            m,
            _NP,
        )
        for m in ("overall", "few")
    ),
    *(
        Claim(
            f"vpt_cb_vs_ib_{m}",
            _VPT_STUDY,
            "Class-balanced sampling beats instance-balanced sampling (VPT-deep)",
            VPT_CB,
            VPT_IB,
            m,
            paper,
            effect,
        )
        for m, paper, effect in (("overall", f"+6.65 (44.17 vs 37.52; {_T1})", 6.65), ("few", _NP, None))
    ),
    # LPT Table 2: VPT-deep (instance-balanced, the paper's VPT) against the frozen backbone's features
    Claim(
        "table2_knn_acc",
        _VPT_STUDY,
        "VPT-deep features beat the frozen backbone's on k-NN accuracy (LPT Table 2)",
        feature_key(VPT_IB),
        feature_key(FROZEN),
        "knn_acc",
        "+1.1 (Places-LT, LPT Table 2)",
        1.1,
    ),
    Claim(
        "table2_gamma",
        _VPT_STUDY,
        "VPT-deep features are more separable than the frozen backbone's: lower gamma (LPT Table 2)",
        feature_key(VPT_IB),
        feature_key(FROZEN),
        "gamma",
        "lower gamma (Places-LT, LPT Table 2)",
    ),
    # --- the LPT ladder: each rung changes one part of LPT (docs/methods.md#the-lpt-ladder) ---
    *(
        Claim(f"ladder_{part}", _LADDER, text, rung, below, "overall", _NP)
        for (below, rung), (part, text) in zip(
            zip(LADDER, LADDER[1:]),
            (
                (
                    "cosine_head",
                    "A cosine head beats a linear head (VPT-deep prompts, cross-entropy, class-balanced batches)",
                ),
                ("head_dropout", "Dropout before the cosine head helps (cross-entropy, class-balanced batches)"),
                ("dual_sampling", "Dual sampling beats class-balanced batches alone (cross-entropy in both branches)"),
                ("agcl", "A-GCL beats cross-entropy in both branches of dual sampling"),
                ("weight_decay", "LPT's larger weight decay beats the VPT study's (LPT stage 1 vs the A-GCL rung)"),
            ),
            strict=True,
        )
    ),
    *(
        Claim(
            f"ladder_group_pool_{m}",
            _LADDER,
            "The group prompt pool beats stage 1 trained for the same extra epochs (LPT stage 2 vs stage 1 on)",
            STAGE2_ROW,
            STAGE1_CONTINUED_ROW,
            m,
            _NP,
        )
        for m in ("overall", "few")
    ),
    # --- leave-one-out from LPT stage 1 (without the weight decay: ladder_weight_decay) and A-GCL's parts ---
    *(
        Claim(
            f"loo_{part}",
            _ABLATION,
            f"LPT stage 1 beats itself without {name}",
            STAGE1_ROW,
            loo_row(part),
            "overall",
            _NP,
        )
        for part, name in (
            ("agcl", "A-GCL (cross-entropy in both branches)"),
            ("dual_sampling", "dual sampling (class-balanced batches only)"),
            ("cosine_head", "the cosine head (a linear head)"),
        )
    ),
    *(
        Claim(
            f"agcl_part_{part}",
            _ABLATION,
            f"{name} beats cross-entropy (LPT stage 1, both branches)",
            agcl_part_row(part),
            loo_row("agcl"),
            "overall",
            _NP,
        )
        for part, name in (
            ("cloud", "A-GCL's Gaussian cloud alone"),
            ("no_cloud", "A-GCL without its cloud (margin, asymmetric focusing, label smoothing)"),
        )
    ),
    # --- the same gaps after a post-hoc prior correction chosen on val: a gap that closes is a prior shift ---
    *(
        Claim(
            f"{cid}_posthoc",
            _POSTHOC,
            f"{text}, after a post-hoc prior correction of each (tau on val)",
            a,
            b,
            "posthoc_overall",
            _NP,
        )
        for cid, text, a, b in (
            (
                "ladder_cosine_head",
                "A cosine head beats a linear head",
                ladder_row("cosine_head"),
                ladder_row("linear_head"),
            ),
            ("loo_agcl", "LPT stage 1 beats itself without A-GCL", STAGE1_ROW, loo_row("agcl")),
            ("lpt_vs_vpt_cb", "LPT (stage 2) beats VPT-deep (class-balanced sampling)", STAGE2_ROW, VPT_CB),
        )
    ),
    # --- LPT against the baselines ---
    Claim(
        "lpt_vs_vpt_cb_overall",
        _LPT,
        "LPT (stage 2) beats VPT-deep (class-balanced sampling)",
        STAGE2_ROW,
        VPT_CB,
        "overall",
        "+5.90 across sources (Places-LT: LPT 50.07, released checkpoint; VPT-deep 44.17, LPT Table 1)",
        5.90,
    ),
    # the decoupling baselines a reviewer compares LPT with first (the same seeds, the same frozen backbone)
    Claim(
        "lpt_vs_crt_overall",
        _LPT,
        "LPT (stage 2) beats cRT (classifier re-trained class-balanced on the instance-balanced VPT-deep model)",
        STAGE2_ROW,
        CRT_CB,
        "overall",
        _NP,
    ),
    Claim(
        "lpt_vs_la_probe_overall",
        _LPT,
        "LPT (stage 2) beats the logit-adjusted linear probe (instance-balanced sampling)",
        STAGE2_ROW,
        LP_LA_IB,
        "overall",
        _NP,
    ),
    # --- TEA vs the plain PEFT model, per PEFT method (CLIP, logit-adjusted loss) ---
    *(
        Claim(
            f"tea_{peft}_{m}",
            _TEA,
            f"TEA beats plain {name} (CLIP, logit-adjusted loss)",
            method_key(member_name(peft, "la", "pea_pg_tec")),
            method_key(member_name(peft, "la", "none")),
            m,
            paper,
        )
        for peft, name in ((p, spec.title) for p, spec in PEFT.items())
        for m, paper in (("few", _TEA_FEW), ("overall", _TEA_ALL))
    ),
    # --- LPT++: the MoE scorer vs the better single expert (chosen on val) and vs a uniform average ---
    *(
        Claim(
            f"lptpp_moe_vs_best_expert_{m}",
            _LPTPP,
            "The MoE scorer beats the better single expert (chosen on val)",
            MOE_ROW,
            _EXPERTS,
            m,
            _LPTPP_MOE,
        )
        for m in ("overall", "few")
    ),
    *(
        Claim(
            f"lptpp_moe_vs_uniform_{m}",
            _LPTPP,
            "The MoE scorer beats a uniform average of the experts",
            MOE_ROW,
            UNIFORM_ROW,
            m,
            _LPTPP_MOE,
        )
        for m in ("overall", "few")
    ),
    # --- controls: an effect the testbed must detect, and a comparison of a configuration with itself ---
    Claim(
        "control_la_probe_few",
        CONTROL,
        "Logit adjustment beats plain cross-entropy (linear probe, instance-balanced sampling)",
        LP_LA_IB,
        LP_IB,
        "few",
        f"{_NP} (positive control: must come out supported)",
    ),
    Claim(
        "control_la_probe_overall",
        CONTROL,
        "Logit adjustment beats plain cross-entropy (linear probe, instance-balanced sampling)",
        LP_LA_IB,
        LP_IB,
        "overall",
        f"{_NP} (positive control of the contested effects' size: must come out supported)",
    ),
    Claim(
        "control_aa_vpt_cb",
        CONTROL,
        "A/A control: VPT-deep (class-balanced) beats itself trained from other initialisation, augmentation and "
        "sampler seeds on the same split",
        VPT_CB,
        VPT_CB_REPLICA,
        "overall",
        "no difference (A/A control: must come out inconclusive)",
    ),
)


# ---------------------------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------------------------


def _value(results: Results, key: str, seed: int, metric: str) -> float:
    row = results[key][seed]
    if metric not in row:
        raise ValueError(f"results[{key!r}][{seed!r}] has no {metric!r} (keys: {', '.join(map(str, row))})")
    value = row[metric]
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"results[{key!r}][{seed!r}][{metric!r}] is not a number: {value!r}") from None
    if metric in LOWER_IS_BETTER:
        if not (math.isfinite(value) and value >= 0.0):
            raise ValueError(f"results[{key!r}][{seed!r}][{metric!r}] = {value!r} is not a finite ratio >= 0")
    elif not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"results[{key!r}][{seed!r}][{metric!r}] = {value!r} is not an accuracy in [0, 1]")
    return value


def advantage(metric: str, a: float, b: float) -> float:
    """How much `a` beats `b` on `metric`, in the claims' units: 100 (a - b), or 100 (b - a) where lower is better."""
    return 100.0 * ((b - a) if metric in LOWER_IS_BETTER else (a - b))


def _shared_seeds(results: Results, keys: Iterable[str]) -> list[int]:
    sets = [set(results[k]) for k in keys]
    return sorted(set.intersection(*sets)) if sets else []


def resolve(side: Side, results: Results) -> tuple[str | None, str]:
    """The method key a side stands for, and a note ("" when it can be evaluated) saying why it cannot.

    A plain key is returned as it is (absent or not); an unresolvable `Best` gives None.
    """
    if isinstance(side, str):
        return side, ("" if side in results else f"missing: {side}")
    absent = [k for k in side.keys if k not in results]
    if absent:
        return None, f"missing: {', '.join(absent)}"
    seeds = _shared_seeds(results, side.keys)
    if not seeds:
        return None, f"no seed shared by all of {side}"
    val = {k: float(np.mean([_value(results, k, s, VAL_METRIC) for s in seeds])) for k in side.keys}
    return max(side.keys, key=lambda k: (val[k], -side.keys.index(k))), ""


def evaluate_claim(claim: Claim, results: Results, confidence: float = 0.95) -> dict:
    """One claims-table row (JSON-safe), the claim alone in its family (`evaluate_claims` adjusts over families):
    per-seed differences in the claims' units (`advantage`), their mean, t interval, paired t-test p-value
    (`p`; `p_adjusted`), the minimum detectable effect at 80% power (`mde`), the raw verdict (`raw_verdict`, the
    interval's) and the verdict (`verdict`: adjusted, or "unmeasurable"; see the module docstring)."""
    check_confidence(confidence)
    a, note_a = resolve(claim.a, results)
    b, note_b = resolve(claim.b, results)
    row = {
        "id": claim.id,
        "group": claim.group,
        "text": claim.text,
        "metric": claim.metric,
        "paper": claim.paper,
        "paper_effect": claim.paper_effect,
        "family": claim.family,
        "a_spec": str(claim.a),
        "b_spec": str(claim.b),
        "a": a,
        "b": b,
        "confidence": confidence,
        "seeds": [],
        "a_mean": None,
        "b_mean": None,
    }
    if not (note_a or note_b) and claim.metric in LATER_METRICS:
        older = [k for k in dict.fromkeys((a, b)) if any(claim.metric not in r for r in results[k].values())]
        note_a = "; ".join(f"{k} predates {claim.metric!r}: re-run its stage" for k in older)
    if note_a or note_b:
        note = "; ".join(n for n in (note_a, note_b) if n)
        stats_ = diff_interval([], confidence)
        return {**row, **stats_, **_tests(stats_, None, confidence, "not run"), "note": note}
    seeds = _shared_seeds(results, (a, b))
    va = [_value(results, a, s, claim.metric) for s in seeds]
    vb = [_value(results, b, s, claim.metric) for s in seeds]
    stats_ = diff_interval([advantage(claim.metric, x, y) for x, y in zip(va, vb)], confidence)
    row.update(
        seeds=[int(s) for s in seeds],
        a_mean=100.0 * float(np.mean(va)) if seeds else None,
        b_mean=100.0 * float(np.mean(vb)) if seeds else None,
    )
    note = "" if seeds else f"no seed shared by {a} and {b}"
    raw = verdict(stats_["low"], stats_["high"])
    return {**row, **stats_, **_tests(stats_, claim.paper_effect, confidence, raw), "note": note}


def _tests(stats_: dict, paper_effect: float | None, confidence: float, raw: str) -> dict:
    """The test fields of a row, the claim alone in its family (p_adjusted = p)."""
    p = paired_p_value(stats_["mean"], stats_["std"], stats_["n"])
    mde = min_detectable_effect(stats_["std"], stats_["n"], 1.0 - confidence, POWER)
    measurable = None if mde is None or paper_effect is None else bool(mde <= abs(paper_effect))
    out = {"p": p, "mde": mde, "power": POWER, "measurable": measurable, "raw_verdict": raw}
    return {**out, **_adjust(out, stats_["mean"], p, confidence)}


def _adjust(row: dict, mean: float | None, p_adjusted: float | None, confidence: float) -> dict:
    """`p_adjusted` and the verdict it gives (see the module docstring)."""
    if row["raw_verdict"] == "not run":
        return {"p_adjusted": None, "verdict": "not run"}
    v = adjusted_verdict(mean, p_adjusted, 1.0 - confidence)
    if v == "inconclusive" and row["measurable"] is False:
        v = "unmeasurable"
    return {"p_adjusted": p_adjusted, "verdict": v}


def evaluate_claims(results: Results, claims: Sequence[Claim] = CLAIMS, confidence: float = 0.95) -> list[dict]:
    """The claims table: one row per claim (see `evaluate_claim`), its p-values Holm-adjusted over each family
    (`FAMILIES`) and its verdicts read from the adjusted ones; absent methods give verdict "not run"."""
    ids = [c.id for c in claims]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise ValueError(f"duplicate claim ids: {', '.join(dup)}")
    rows = [evaluate_claim(c, results, confidence) for c in claims]
    for family in FAMILIES:
        members = [r for r in rows if r["family"] == family]
        for r, p_adj in zip(members, holm([r["p"] for r in members])):
            r.update(_adjust(r, r["mean"], p_adj, confidence))
    return rows


# ---------------------------------------------------------------------------------------------------------------
# Output: JSON, markdown, forest plot
# ---------------------------------------------------------------------------------------------------------------


def _plain(x):
    """Numpy scalars/arrays to Python numbers and lists; NaN/inf to None (strict JSON)."""
    if isinstance(x, Mapping):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple | np.ndarray):
        return [_plain(v) for v in x]
    if isinstance(x, bool | np.bool_):
        return bool(x)
    if isinstance(x, int | np.integer):
        return int(x)
    if isinstance(x, float | np.floating):
        return float(x) if math.isfinite(x) else None
    return x


def claims_json(rows: Sequence[dict], confidence: float | None = None) -> dict:
    """``{"confidence", "units", "claims"}``, JSON-safe; `confidence` defaults to the rows' own."""
    found = {r["confidence"] for r in rows if "confidence" in r}
    if confidence is None:
        if len(found) > 1:
            raise ValueError(f"rows were computed at several confidence levels: {sorted(found)}")
        confidence = found.pop() if found else 0.95
    elif found - {confidence}:
        raise ValueError(f"rows were computed at confidence {sorted(found)}, not {confidence}")
    return {"confidence": float(confidence), "units": UNITS, "claims": _plain(list(rows))}


def across_pretraining(rows: Sequence[dict], others: Mapping[str, Sequence[dict]]) -> list[dict]:
    """Each claim row with its verdict on other pretrained backbones (`others`: label -> claim rows, e.g. the
    robustness stage's `pretrain_seed_1`): `pretrainings` {label: verdict} (this one is `this`) and `robust`:
    *holds* when every pretraining that ran the claim gives the same verdict, *fragile* when one differs, None
    when no other pretraining ran it."""
    index = {label: {(r["id"], r["metric"]): r["verdict"] for r in rs} for label, rs in others.items()}
    out = []
    for r in rows:
        found = {label: v[(r["id"], r["metric"])] for label, v in index.items() if (r["id"], r["metric"]) in v}
        found = {k: v for k, v in found.items() if v != "not run"}
        verdicts = {"this": r["verdict"], **found}
        robust = (
            None
            if not found or r["verdict"] == "not run"
            else ("holds" if len(set(verdicts.values())) == 1 else "fragile")
        )
        out.append({**r, "pretrainings": verdicts, "robust": robust})
    return out


def _robust(row: dict) -> str:
    """The verdict cell's note on other pretrainings (`across_pretraining`)."""
    if row.get("robust") is None:
        return ""
    n = len(row["pretrainings"])
    if row["robust"] == "holds":
        return f" (holds on {n} pretrainings)"
    same = sum(v == row["verdict"] for v in row["pretrainings"].values())
    return f" *fragile* ({row['verdict']} on {same} of {n} pretrainings)"


def _signed(x: float) -> str:
    s = f"{x:+.2f}"
    return "+0.00" if s == "-0.00" else s


def _ours(row: dict) -> str:
    if row["verdict"] == "not run":
        return "not run"
    n = row["n"]
    if n == 0:
        return "no shared seeds"
    seeds = f"({n} seed{'s' if n != 1 else ''})"
    if row["low"] is None:
        return f"{_signed(row['mean'])} {seeds}"
    return f"{_signed(row['mean'])} [{_signed(row['low'])}, {_signed(row['high'])}] {seeds}"


def _claim_label(row: dict) -> str:
    text = row["text"]
    for side in ("a", "b"):
        if row[f"{side}_spec"].startswith("Best(") and row[side] is not None:
            text += f" (best on val: `{row[side]}`)"
    return text


def _p(p: float | None) -> str:
    if p is None:
        return "–"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _tests_cell(row: dict) -> str:
    """p raw / p Holm-adjusted."""
    return "–" if row["p"] is None else f"{_p(row['p'])} / {_p(row['p_adjusted'])}"


def _mde(row: dict) -> str:
    return "–" if row.get("mde") is None else f"{row['mde']:.2f}"


def claims_markdown(rows: Sequence[dict]) -> str:
    """A markdown table: Claim | metric | paper | ours: mean [low, high] (n seeds) | p raw / Holm | detectable at
    80% power | raw verdict | verdict (the claims' units, `UNITS`)."""

    def cell(s: str) -> str:
        return str(s).replace("|", "\\|").replace("\n", " ")

    lines = [
        "| Claim | metric | paper | ours: mean [low, high] (n seeds) | p: raw / Holm | detectable (80% power) "
        "| raw verdict | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = (
            _claim_label(r),
            r["metric"],
            r["paper"],
            _ours(r),
            _tests_cell(r),
            _mde(r),
            r["raw_verdict"],
            f"**{r['verdict']}**{_robust(r)}",
        )
        lines.append("| " + " | ".join(cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def plot_claims(rows: Sequence[dict], title: str = "") -> Figure:
    """Forest plot: per claim the mean paired difference (dot) and its t interval (bar), coloured by verdict (the
    Holm-adjusted one)."""
    n = len(rows)
    fig = Figure(figsize=(11.0, 1.4 + 0.32 * max(n, 1)), layout="constrained")
    ax = fig.subplots()
    ys = np.arange(n)
    for y, r in zip(ys, rows):
        color = VERDICT_COLORS[r["verdict"]]
        if r.get("mean") is None:
            label = " not run" if r["verdict"] == "not run" else " no shared seeds"
            ax.text(0.0, y, label, color=color, fontsize=8, fontstyle="italic", va="center", ha="left")
            continue
        if r.get("low") is not None:
            ax.hlines(y, r["low"], r["high"], color=color, linewidth=2.0)
        ax.plot([r["mean"]], [y], "o", color=color, markersize=5)
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_yticks(ys, [f"{r['text']} [{r['metric']}]" for r in rows], fontsize=8)
    ax.set_ylim(n - 0.5, -0.5)  # first claim on top
    ax.set_xlabel(f"how much a beats b (points; gamma × 100), {_confidence_pct(rows)}% t interval over seeds")
    ax.grid(axis="x", alpha=0.3)
    handles = [Line2D([], [], color=VERDICT_COLORS[v], marker="o", linewidth=2.0, label=v) for v in VERDICTS_ADJUSTED]
    ax.legend(
        handles=handles, title="verdict (Holm)", fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False
    )
    if title:
        ax.set_title(title)
    return fig


def _confidence_pct(rows: Sequence[dict]) -> str:
    levels = {r.get("confidence", 0.95) for r in rows} or {0.95}
    return "/".join(f"{100 * c:g}" for c in sorted(levels))
