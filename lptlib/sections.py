"""The method sections of params.yaml: `vpt_study`, `lpt`, `tea` (with the PEFT spec), `lptpp` and `pretrain`.

They sit below `lptlib.config` (which composes them with the data, backbone and seed sections into one `Config`)
and below the recipes that read them (`lptlib.recipes.*`), so the configuration never imports the code it
configures. Every field carries its default for the offline miniature and its meaning (docs/parameters.md); a
preset (presets/) overlays the paper-scale values.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from lptlib.data.samplers import SAMPLING_MODES, Sampling
from lptlib.engine import Schedule
from lptlib.models.backbones import BACKBONE_ROLES, Role
from lptlib.models.blocks import PromptForm
from lptlib.objectives import TEA_VARIANTS, AGCLConfig
from lptlib.schema import (
    BATCH_MAX,
    EPOCHS_MAX,
    WIDTH_MAX,
    Field,
    Resume,
    RuleError,
    Section,
    Seed,
    Templates,
    distinct,
    field_validator,
    model_validator,
    resume_ok,
    templates_ok,
)


# ---------------------------------------------------------------------------------------------------- vpt_study
class VPTStudyConfig(Section):
    """The `vpt_study` section."""

    backbone: Role = Field("visual", description="which `backbones` entry is studied")
    prompt_length: int = Field(10, ge=1, le=512, description="VPT-deep prompt tokens per block (l_p)")
    prompt_form: PromptForm = Field(
        "kv", description="kv: prompts in keys/values only (LPT eq. 1); concat: concatenate and strip (same outputs)"
    )
    head: Literal["linear", "cosine"] = Field("linear", description="classifier on the final CLS feature")
    cosine_scale: float = Field(20.0, gt=0.0, le=1000.0, description="scale s of a cosine head")
    samplings: tuple[Sampling, ...] = Field(
        SAMPLING_MODES, description="Table 1 columns: instance_balanced, class_balanced"
    )
    feature_views: int = Field(
        4,
        ge=1,
        le=64,
        description="augmented views per training image whose cached features the linear probes train on",
    )
    la_tau: float = Field(
        1.0, ge=0.0, le=10.0, description="tau of the logit-adjusted linear probe (Menon et al. 2021)"
    )
    # SGD, warm-up then cosine decay per step. Each rate is the centre of its rows' learning-rate grids; a row's
    # own val-chosen rate is its `arm_lr` entry (docs/tuning.md).
    linear_probe: Schedule = Field(
        Schedule(epochs=10, lr=0.5), description="linear probing on cached features (also the LA probe and cRT)"
    )
    vpt_deep: Schedule = Field(Schedule(epochs=10, lr=0.25), description="VPT-deep prompt tuning")
    replica_seed_offset: int | None = Field(
        1000,
        ge=1,
        le=2**30,
        description="the A/A control: VPT-deep with class-balanced sampling trained a second time on the same split, "
        "its initialisation, augmentation and sampler seeded with seed + this offset (row "
        "vpt_deep_replica/class_balanced); null: no replica",
    )
    knn_k: int = Field(10, ge=1, le=1000, description="k of the cosine k-NN accuracy (Table 2)")
    feature_images_per_class: int = Field(
        100, ge=2, le=100_000, description="images per class whose features LDA and Table 2 use"
    )
    resume: Resume = "auto"

    _resume = field_validator("resume")(resume_ok)

    @field_validator("samplings")
    @classmethod
    def _samplings(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return distinct(v, "sampling mode")


# ---------------------------------------------------------------------------------------------------- lpt
@dataclass(frozen=True)
class Arm:
    """One configuration of LPT's stage 1, each of its parts on or off (docs/methods.md#the-lpt-ladder).

    head: cosine | linear; dropout: `lpt.head_dropout` before the head (False: none); dual_sampling: LPT's two
    branches (False: class-balanced batches only); loss: ce (on s cos) | agcl | agcl_cloud (A-GCL's Gaussian cloud
    alone: no margin, focusing or smoothing) | agcl_no_cloud (A-GCL without the cloud: margin, asymmetric focusing,
    label smoothing); lpt_weight_decay: LPT's (`lpt.stage1.weight_decay`; False: the VPT study's)."""

    head: Literal["cosine", "linear"] = "cosine"
    dropout: bool = True
    dual_sampling: bool = True
    loss: Literal["ce", "agcl", "agcl_cloud", "agcl_no_cloud"] = "agcl"
    lpt_weight_decay: bool = True

    def differences(self, other: Arm) -> list[str]:
        """The parts in which two arms differ."""
        return [
            f
            for f in ("head", "dropout", "dual_sampling", "loss", "lpt_weight_decay")
            if getattr(self, f) != getattr(other, f)
        ]


#: LPT stage 1's row key and configuration (every part on)
LPT_STAGE1 = "lpt_stage1"
#: the LPT ladder: from VPT-deep's linear head on class-balanced batches to stage 1, one part per rung
LADDER_ARMS = {
    "ladder/linear_head": Arm("linear", False, False, "ce", False),
    "ladder/cosine_head": Arm("cosine", False, False, "ce", False),
    "ladder/head_dropout": Arm("cosine", True, False, "ce", False),
    "ladder/dual_sampling": Arm("cosine", True, True, "ce", False),
    "ladder/agcl": Arm("cosine", True, True, "agcl", False),
    LPT_STAGE1: Arm(),
}
#: leave-one-out from stage 1 (without the weight decay is `ladder/agcl`) and A-GCL split into its parts
ABLATION_ARMS = {
    "lpt_stage1_without/agcl": Arm(loss="ce"),
    "lpt_stage1_without/dual_sampling": Arm(dual_sampling=False),
    "lpt_stage1_without/cosine_head": Arm(head="linear"),
    "agcl_part/cloud": Arm(loss="agcl_cloud"),
    "agcl_part/no_cloud": Arm(loss="agcl_no_cloud"),
}
ARMS: dict[str, Arm] = {**LADDER_ARMS, **ABLATION_ARMS}
#: the arms stage 1's notebook trains besides stage 1 by default
EXTRA_ARMS = tuple(k for k in ARMS if k != LPT_STAGE1)


class LPTConfig(Section):
    """The `lpt` section."""

    backbone: Role = Field("visual", description="which `backbones` entry LPT tunes")
    prompt_length: int = Field(
        10, ge=1, le=512, description="l_p: shared prompts per block, and group prompts per block"
    )
    prompt_form: PromptForm = Field("kv", description="kv (LPT eq. 1) | concat")
    cosine_scale: float = Field(
        20.0, gt=0.0, le=1000.0, description="s of the cosine head at prediction (A-GCL has its own)"
    )
    head_dropout: float = Field(0.1, ge=0.0, lt=1.0, description="dropout before the cosine head")
    num_samples_cls: int = Field(4, ge=1, le=BATCH_MAX, description="class-aware sampler: images per visited class")
    eta: float = Field(
        0.5, ge=0.0, le=10.0, description="dual sampling: beta_e = eta (E - e) / E weights the instance branch"
    )
    agcl: AGCLConfig = Field(AGCLConfig(), description="A-GCL loss")
    pool_size: int = Field(20, ge=1, le=WIDTH_MAX, description="m: entries of the group prompt pool")
    top_k: int = Field(2, ge=1, description="k: keys picked per image")
    share_blocks: int = Field(
        3,
        ge=0,
        le=1000,
        description="K: blocks 1..K use the shared prompts only (the first half: 3 of vit-mini's 6, 6 of 12)",
    )
    match_weight: float = Field(0.5, ge=0.0, le=100.0, description="weight of the key-query matching term")
    # SGD, warm-up then cosine decay per step; weight decay 0.01 (LPT). Each rate is the centre of its rows'
    # learning-rate grids; a row's own val-chosen rate is its `arm_lr` entry (docs/tuning.md). batch_size: per branch.
    stage1: Schedule = Field(Schedule(epochs=10, lr=0.0625, weight_decay=0.01), description="stage 1")
    stage2: Schedule = Field(Schedule(epochs=10, lr=0.05, weight_decay=0.01), description="stage 2")
    arms: tuple[str, ...] = Field(
        EXTRA_ARMS,
        description="the ladder and ablation arms stage 1's stage trains besides stage 1 (row keys; () none)",
    )
    resume: Resume = "auto"

    _resume = field_validator("resume")(resume_ok)

    @model_validator(mode="after")
    def _rules(self) -> LPTConfig:
        unknown = [k for k in self.arms if k not in EXTRA_ARMS]
        if unknown:
            raise RuleError(
                "arms",
                f"unknown arm {', '.join(map(repr, unknown))}; use one of {', '.join(EXTRA_ARMS)}"
                + (" (stage 1 itself always runs)" if LPT_STAGE1 in unknown else ""),
            )
        if self.top_k > self.pool_size:
            raise RuleError("top_k", f"{self.top_k} keys cannot be picked from a pool of {self.pool_size}")
        return self


# ---------------------------------------------------------------------------------------------------- tea
@dataclass(frozen=True)
class PEFTSpec:
    """What a PEFT method's name stands for, declared once: its display name, the `PEFTClassifier` arguments it
    takes from the `tea` section, and its schedule, the `tea.<name>` subsection."""

    title: str
    arguments: Callable[[TEAConfig], dict]


#: every PEFT method of the TEA matrix (the config, the model builder, the benchmark and the claims read it)
PEFT: dict[str, PEFTSpec] = {
    "vpt_deep": PEFTSpec("VPT-deep", lambda t: {"prompt_length": t.prompt_length}),
    "adaptformer": PEFTSpec("AdaptFormer", lambda t: {"adapter": True}),
    "lora": PEFTSpec("LoRA", lambda t: {"lora_rank": t.lora_rank}),
}


PEFT_METHODS = tuple(PEFT)


TEA_LOSSES = ("ce", "la", "bs", "agcl")


def peft_arguments(peft: str, t: TEAConfig) -> dict:
    """The `PEFTClassifier` arguments of PEFT method `peft` under the `tea` section `t` (no other method's module)."""
    return {
        "prompt_length": 0,
        "prompt_form": t.prompt_form,
        "adapter": False,
        "bottleneck": t.bottleneck,
        "lora_rank": 0,
        **PEFT[peft].arguments(t),
    }


def peft_schedule(peft: str, t: TEAConfig) -> Schedule:
    """The training schedule of PEFT method `peft`: the subsection `tea.<peft>`."""
    return getattr(t, peft)


class TEAMatrixConfig(Section):
    """`tea.matrix`: the members the stage `tea` trains for each seed."""

    peft: tuple[Literal[PEFT_METHODS], ...] = Field(PEFT_METHODS, description="PEFT methods of the TEA matrix")
    loss: tuple[Literal["ce", "la", "bs", "agcl"], ...] = Field(
        ("la",), description="losses of the matrix (all: ce, la, bs, agcl)"
    )
    tea: tuple[Literal["none", "pea", "pea_pg", "pea_pg_tec"], ...] = Field(
        ("none", "pea_pg_tec"), description="TEA variants of the matrix (all: none, pea, pea_pg, pea_pg_tec)"
    )

    @field_validator("peft", "loss", "tea")
    @classmethod
    def _values(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return distinct(v, "value")


class TEAConfig(Section):
    """The `tea` section."""

    backbone: Role = Field("vision_language", description="which `backbones` entry is tuned")
    templates: Templates = Field(
        ("a photo of a {name}.",), description="prompts of the text-initialised head and of the zero-shot classifier"
    )
    cosine_scale: float = Field(25.0, gt=0.0, le=1000.0, description="s of the cosine head (LIFT / TEA: 25)")
    head_init: Literal["text", "class_mean", "random"] = Field(
        "text", description="cosine head init: text (LIFT, CLIP only), class_mean (LIFT for visual-only ViTs) or random"
    )
    sampling: Sampling = Field("instance_balanced", description="training sampler (LIFT: instance)")
    prompt_length: int = Field(10, ge=1, le=512, description="vpt_deep: prompt tokens per block")
    prompt_form: PromptForm = Field("kv", description="vpt_deep: kv | concat")
    bottleneck: int | None = Field(
        None,
        ge=1,
        le=WIDTH_MAX,
        description="adaptformer: bottleneck width; null: max(1, 2^floor(log2(D / 24))), D the backbone width",
    )
    lora_rank: int = Field(4, ge=1, le=WIDTH_MAX, description="lora: rank r of the q and v updates")
    la_tau: float = Field(1.0, ge=0.0, le=10.0, description="la: tau of the logit adjustment")
    agcl: AGCLConfig = Field(
        AGCLConfig(scale=25.0), description="agcl: A-GCL; the (lambda+, lambda-) pair of the branch matching `sampling`"
    )
    temperature: float = Field(
        0.1, ge=1e-6, le=100.0, description="PEA: tau of the patch attention softmax_n(cos(h_n, w_y) / tau)"
    )
    mix: float = Field(0.5, ge=0.0, le=1.0, description="PEA: lambda of e^ = norm((1 - lambda) e_cls + lambda u)")
    gate_max: float = Field(
        0.5, ge=0.0, le=1.0, description="PG: g_max, the augmentation probability of the rarest class"
    )
    tec_weight: float = Field(1.0, ge=0.0, le=100.0, description="TEC: weight lambda_tec of the consistency loss")
    # One schedule per PEFT method, 5 epochs. Each rate is the centre of its members' learning-rate grids; a
    # member's own val-chosen rate is its `arm_lr` entry (docs/tuning.md).
    vpt_deep: Schedule = Field(Schedule(epochs=5, lr=0.025), description="vpt_deep schedule")
    adaptformer: Schedule = Field(Schedule(epochs=5, lr=0.0025), description="adaptformer schedule")
    lora: Schedule = Field(Schedule(epochs=5, lr=0.0125), description="lora schedule")
    latency_batches: int = Field(20, ge=1, le=10_000, description="batches of the inference-latency measurement")
    matrix: TEAMatrixConfig = Field(TEAMatrixConfig(), description="the members the stage `tea` trains per seed")
    resume: Resume = "auto"

    _resume = field_validator("resume")(resume_ok)
    _templates = field_validator("templates")(templates_ok)


# ---------------------------------------------------------------------------------------------------- lptpp
class ScorerConfig(Section):
    """`lptlib.scorer`: phase 3's MoE scorer (AdamW at a constant learning rate, class-balanced batches)."""

    hidden: int = Field(64, ge=1, le=WIDTH_MAX, description="hidden width of the MoE scorer's MLP")
    epochs: int = Field(30, ge=1, le=EPOCHS_MAX, description="passes over the cached train features")
    batch_size: int = Field(128, ge=1, le=BATCH_MAX, description="cached samples per step (class-balanced sampling)")
    lr: float = Field(1e-3, gt=0.0, le=100.0, description="AdamW learning rate")
    weight_decay: float = Field(1e-4, ge=0.0, le=1.0, description="AdamW weight decay")


class LPTPPConfig(Section):
    """The `lptpp` section."""

    experts: tuple[Role, ...] = Field(
        BACKBONE_ROLES, description="`backbones` entries used as experts: visual, vision_language"
    )
    bottleneck: int | None = Field(
        None,
        ge=1,
        le=WIDTH_MAX,
        description="adapter bottleneck; null: max(1, 2^floor(log2(D / 24))), D the backbone width",
    )
    templates: Templates = Field(
        ("a photo of a {name}.",), description="text-initialised head of the vision-language expert"
    )
    # 5 epochs per phase on the miniature (two phases, two experts and three seeds fit the pipeline's time budget)
    phase1: Schedule = Field(
        Schedule(epochs=5, lr=0.1, weight_decay=0.01), description="phase 1: shared prompts + adapters + head"
    )
    phase2: Schedule = Field(
        Schedule(epochs=5, lr=0.05, weight_decay=0.01), description="phase 2: group prompts + keys + head"
    )
    scorer: ScorerConfig = Field(ScorerConfig(), description="phase 3: the MoE scorer")
    resume: Resume = "auto"

    _resume = field_validator("resume")(resume_ok)
    _templates = field_validator("templates")(templates_ok)

    @field_validator("experts")
    @classmethod
    def _experts(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return distinct(v, "expert")


# ---------------------------------------------------------------------------------------------------- pretrain
class PretrainRunConfig(Section):
    """One model's pretraining schedule (AdamW, warm-up steps then cosine decay per step)."""

    epochs: int = Field(2, ge=1, le=EPOCHS_MAX, description="passes over the source pool")
    batch_size: int = Field(256, ge=1, le=BATCH_MAX, description="images per step")
    lr: float = Field(1e-3, gt=0.0, le=100.0, description="AdamW peak learning rate")
    weight_decay: float = Field(0.05, ge=0.0, le=1.0, description="AdamW weight decay")
    warmup_steps: int = Field(50, ge=0, le=10_000_000, description="linear warm-up steps, then cosine decay to 0")
    max_images: int | None = Field(None, ge=1, description="smoke tests only: cap the source pool")


DEFAULT_TEMPLATES = (
    "a photo of a {name}.",
    "a picture of a {name}.",
    "a black and white photo of a {name}.",
    "a product photo of a {name}.",
    "an image of a {name}.",
)


class PretrainConfig(Section):
    """The `pretrain` section."""

    seed: Seed | None = Field(
        None, description="seed of the pretraining (null: `seed`); the robustness stage varies it (robustness/)"
    )
    vit_mini: PretrainRunConfig = Field(PretrainRunConfig(), description="vit-mini, 4 coarse labels")
    clip_mini: PretrainRunConfig = Field(PretrainRunConfig(), description="clip-mini, contrastive")
    caption_templates: Templates = Field(DEFAULT_TEMPLATES, description="captions of the contrastive pretraining")
    zero_shot_templates: Templates = Field(("a photo of a {name}.",), description="prompts of the zero-shot classifier")

    _templates = field_validator("caption_templates", "zero_shot_templates")(templates_ok)


# ---------------------------------------------------------------------------------------------------- row keys
# The keys of the result rows the stages write, declared once: the recipes, the claims table, the results table,
# the learning-rate grid and `arm_lr` (lptlib.config) use them.
def row_name(method: str, sampling: str) -> str:
    """Table 1 row key, e.g. 'vpt_deep/class_balanced'."""
    return f"{method}/{sampling}"


LP_IB = row_name("linear_probe", "instance_balanced")
LP_CB = row_name("linear_probe", "class_balanced")
LP_LA_IB = row_name("linear_probe_la", "instance_balanced")  # the logit-adjusted probe
CRT_CB = row_name("crt", "class_balanced")  # cRT on the instance-balanced VPT-deep representation
VPT_IB = row_name("vpt_deep", "instance_balanced")
VPT_CB = row_name("vpt_deep", "class_balanced")
#: the A/A control: VPT-deep (class-balanced) again on the same split, from other init / augmentation / sampler seeds
VPT_CB_REPLICA = row_name("vpt_deep_replica", "class_balanced")
TABLE1_ROWS = (LP_IB, LP_CB, LP_LA_IB, CRT_CB, VPT_IB, VPT_CB, VPT_CB_REPLICA)
#: LPT stage 2, and stage 1 trained on for stage 2's epochs without the pool (what stage 2 is compared with)
STAGE2_ROW = "lpt_stage2"
STAGE1_CONTINUED_ROW = "lpt_stage1_continued"


def member_name(peft: str, loss: str, variant: str) -> str:
    """A TEA matrix member's name: e.g. 'lora-la-pea_pg_tec' (its row key is `method_key(name)`)."""
    return f"{peft}-{loss}-{variant}"


def method_key(name: str) -> str:
    """The row key of a TEA member in `metrics/tea/seed_<s>.json`: e.g. 'tea/lora-la-pea_pg_tec'."""
    return f"tea/{name}"


#: the row keys LPT++'s phase 3 writes: each expert alone (`expert_row`), the uniform average and the MoE scorer
MOE_ROW = "lptpp/moe"
UNIFORM_ROW = "lptpp/uniform"


def expert_row(role: str) -> str:
    """The phase-3 row key of one LPT++ expert alone, e.g. 'lptpp/visual'."""
    return f"lptpp/{role}"


def phase_row(role: str, phase: int) -> str:
    """The row key of one LPT++ expert's phase 1 or 2 (`metrics/lptpp_phase<p>/`), e.g. 'visual/phase1': the key
    `arm_lr` sets that phase's rate by (`lptpp.phase1` / `lptpp.phase2`)."""
    return f"{role}/phase{phase}"


LPTPP_PHASE_ROWS = tuple(phase_row(role, phase) for role in BACKBONE_ROLES for phase in (1, 2))

#: the rows whose training schedule `arm_lr` may set: every trained row of Table 1 (the A/A replica takes
#: VPT-deep's, being the same configuration), every stage-1 arm, stage 2 and its comparison, every TEA member,
#: each LPT++ expert's two phases and the MoE scorer (`lptpp.scorer.lr`); the uniform average trains nothing
ARM_LR_ROWS: tuple[str, ...] = (
    *(r for r in TABLE1_ROWS if r != VPT_CB_REPLICA),
    *ARMS,
    STAGE2_ROW,
    STAGE1_CONTINUED_ROW,
    *(method_key(member_name(p, lo, v)) for p in PEFT_METHODS for lo in TEA_LOSSES for v in TEA_VARIANTS),
    *LPTPP_PHASE_ROWS,
    MOE_ROW,
)


#: the stage-1 arms whose loss reads a scale s on the model's normalised scores c: cross-entropy CE(s c, y) on a
#: cosine head, and A-GCL's s on either head (the A-GCL arms, their parts and stage 1 without the cosine head); a
#: linear head under cross-entropy has none (its weights absorb any scale). `arm_cosine_scale` may set s for each
#: (the grid chooses it on val); unset, it is `lpt.cosine_scale` under cross-entropy and `lpt.agcl.scale` under A-GCL
SCALED_ARMS: tuple[str, ...] = tuple(k for k, a in ARMS.items() if a.head == "cosine" or a.loss != "ce")


def scale_key(key: str) -> str:
    """The params key of stage-1 arm `key`'s default scale s (`SCALED_ARMS`): `lpt.cosine_scale` under
    cross-entropy, A-GCL's `lpt.agcl.scale` under A-GCL."""
    return "lpt.cosine_scale" if ARMS[key].loss == "ce" else "lpt.agcl.scale"


def arm_cosine_scale_ok(v: dict[str, float]) -> dict[str, float]:
    """`arm_cosine_scale`: stage-1 arms whose loss reads a scale (`SCALED_ARMS`), scales > 0."""
    for key, s in v.items():
        if key not in SCALED_ARMS:
            raise ValueError(
                f"{key!r} has no scale of its own (a linear head under cross-entropy absorbs it); "
                f"arms with one: {', '.join(SCALED_ARMS)}"
            )
        if isinstance(s, bool) or not 0 < s <= 1000:
            raise ValueError(f"{key}: the cosine scale must be > 0 and <= 1000, got {s!r}")
    return v


def arm_lr_ok(v: dict[str, float]) -> dict[str, float]:
    """`arm_lr`: known row keys (`ARM_LR_ROWS`), learning rates > 0."""
    import difflib

    for key, lr in v.items():
        if key not in ARM_LR_ROWS:
            close = difflib.get_close_matches(key, ARM_LR_ROWS, n=1)
            hint = (
                f" (the A/A replica trains with {VPT_CB!r}'s rate)"
                if key == VPT_CB_REPLICA
                else (f" (did you mean {close[0]!r}?)" if close else "")
            )
            raise ValueError(f"unknown row {key!r}{hint}; rows with a schedule: {', '.join(ARM_LR_ROWS)}")
        if isinstance(lr, bool) or not 0 < lr <= 100:
            raise ValueError(f"{key}: the learning rate must be > 0 and <= 100, got {lr!r}")
    return v
