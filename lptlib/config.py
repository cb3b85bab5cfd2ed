"""The configuration: the `params.yaml` sections composed into one validated `Config`.

Each section's model lives below this module: next to the code that uses it for the data and the backbones
(`DataConfig` in `lptlib.data`, `BackbonesConfig` in `lptlib.models.backbones`, schedules in `lptlib.engine`), and in
`lptlib.sections` for the methods (`VPTStudyConfig`, `LPTConfig`, `TEAConfig`, ...), so that the recipes, which
import `Config`, are never imported by it (the base `Section` is in `lptlib.schema`).

The configuration of a run is composed in one place, `compose`:

    code defaults  <-  presets/<preset>.yaml (an overlay)  <-  presets/tuned/<preset>.yaml  <-  the keys in
    params.yaml  <-  per-run overrides

Defaults are the offline miniature. A preset names only what differs from the defaults, and is merged at load
time; a dataset preset names a shared base (`base: paper`: presets/base/paper.yaml, the paper-scale protocol) and
adds what is its own, as LIFT's two-line dataset configs are merged over its model configs; nothing rewrites
`params.yaml`. The tuned layer `presets/tuned/<preset>.yaml` holds only `arm_lr` and `arm_cosine_scale`, what the
grid chose on val for that preset; it is generated (`python -m lptlib.tune adopt`, docs/tuning.md), never written by hand, and
absent for a preset never tuned. `params.yaml` holds `preset: <name>` and the user's own keys. Overrides
are a mapping (nested or dotted keys: papermill `-y`) or `key=value` strings (`--set`); `dvc exp run -S`
edits `params.yaml` itself. An unknown key (with a "did you mean"), a wrong type, a value out of range or a
broken cross-field rule raises `ConfigError` naming the dotted key, before any data is read.

    python -m lptlib.config show [--preset NAME] [--set key=value ...]   # the resolved configuration
    python -m lptlib.config check                                        # validate params.yaml
    python -m lptlib.config docs                                         # regenerate docs/parameters.md
"""

from __future__ import annotations

import argparse
import copy
import difflib
import sys
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from lptlib.data.datasets import DataConfig
from lptlib.models.backbones import BackbonesConfig
from lptlib.schema import (
    PROCESSES_MAX,
    ConfigError,
    Field,
    RuleError,
    Section,
    Seed,
    distinct,
    field_validator,
    model_validator,
    to_dict,
    without_resume,
)
from lptlib.sections import (
    LPTConfig,
    LPTPPConfig,
    PretrainConfig,
    TEAConfig,
    VPTStudyConfig,
    arm_cosine_scale_ok,
    arm_lr_ok,
)
from lptlib.utils import atomic_write_bytes, git_revision

__all__ = [
    "Config",
    "ConfigError",
    "SECTIONS",
    "compose",
    "describe",
    "load",
    "parse",
    "save_resolved",
    "to_dict",
    "without_resume",
]


class Seeds(Section):
    """The `seeds` section: the seeds the pipeline runs, one DVC stage per seed (`foreach` in dvc.yaml reads these
    lists from params.yaml). A seed sets the long-tailed train set and the val draw (`data.split_seed: null`), the
    initialisation, the sampler order and the augmentation; every method of a stage sees the same seed (paired)."""

    vpt_study: tuple[Seed, ...] = Field((0, 1, 2, 3, 4), min_length=1, description="the VPT study")
    vpt_study_probes: tuple[Seed, ...] = Field(
        tuple(range(5, 15)),
        description="more seeds for Table 1's cached-feature rows alone (linear probe, LA probe; cheap): the claims "
        "between them use these and `vpt_study`'s; () none",
    )
    lpt: tuple[Seed, ...] = Field((0, 1, 2, 3, 4), min_length=1, description="the LPT ladder and LPT stages 1 and 2")
    tea: tuple[Seed, ...] = Field((0, 1, 2), min_length=1, description="the TEA matrix")
    lptpp: tuple[Seed, ...] = Field((0, 1, 2), min_length=1, description="LPT++ (all three phases)")

    @field_validator("vpt_study", "lpt", "tea", "lptpp")
    @classmethod
    def _distinct(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        return distinct(v, "seed")

    @field_validator("vpt_study_probes")
    @classmethod
    def _distinct_or_none(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        return distinct(v, "seed") if v else v

    @model_validator(mode="after")
    def _probe_seeds_apart(self) -> Seeds:
        shared = sorted(set(self.vpt_study) & set(self.vpt_study_probes))
        if shared:
            raise RuleError(
                "vpt_study_probes", f"seeds {shared} are already `vpt_study` seeds (whose stage trains the probes too)"
            )
        return self


class Config(Section):
    """All sections of params.yaml, resolved (defaults <- preset <- params.yaml <- overrides)."""

    seed: Seed = Field(0, description="seed of one run (split, initialisation, sampling); stages get it per seed")
    seeds: Seeds = Field(Seeds(), description="the seeds each stage runs")
    workers: int = Field(
        2,
        ge=1,
        le=PROCESSES_MAX,
        description="training runs in parallel within a stage (single-thread processes); 1: in-process",
    )
    preset: str = Field("miniature", description="the overlay in presets/<name>.yaml merged over the defaults")
    data: DataConfig = Field(DataConfig(), description="the dataset")
    backbones: BackbonesConfig = Field(BackbonesConfig(), description="the two foundation models")
    pretrain: PretrainConfig = Field(PretrainConfig(), description="the miniature's pretraining")
    vpt_study: VPTStudyConfig = Field(VPTStudyConfig(), description="the preliminary VPT study")
    lpt: LPTConfig = Field(LPTConfig(), description="LPT")
    tea: TEAConfig = Field(TEAConfig(), description="TEA on CLIP PEFT")
    lptpp: LPTPPConfig = Field(LPTPPConfig(), description="LPT++")
    arm_lr: dict[str, float] = Field(
        {},
        description="learning rate per row (row key -> lr) over its schedule's `lr`; written by the learning-rate "
        "grid into presets/tuned/<preset>.yaml (docs/tuning.md)",
    )

    arm_cosine_scale: dict[str, float] = Field(
        {},
        description="scale s per stage-1 arm whose loss reads one (row key -> s): over `lpt.cosine_scale` for the "
        "cross-entropy arms, over `lpt.agcl.scale` for the A-GCL arms (and stage 2, which continues stage 1's); "
        "written by the grid into presets/tuned/<preset>.yaml (docs/tuning.md)",
    )

    _arm_lr = field_validator("arm_lr")(arm_lr_ok)
    _arm_cosine_scale = field_validator("arm_cosine_scale")(arm_cosine_scale_ok)


SECTIONS = tuple(Config.model_fields)
DEFAULT_PRESET = "miniature"


# ------------------------------------------------------------------------------ errors, dotted keys
def _describe_value(v: Any) -> str:
    return f"{type(v).__name__} {v!r}"


def _model_at(loc: Sequence[Any]) -> type[BaseModel] | None:
    """The model class reached by following `loc` (field names) from `Config`, or None."""
    model: Any = Config
    for part in loc:
        fields = getattr(model, "model_fields", None)
        if not fields or part not in fields:
            return None
        model = fields[part].annotation
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _message(err: dict) -> str:
    loc = [p for p in err["loc"] if not isinstance(p, str) or not p.startswith(("function-", "tuple["))]
    kind, given, ctx = err["type"], err.get("input"), err.get("ctx") or {}
    key = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in loc).replace(".[", "[")
    if kind == "extra_forbidden":
        parent = _model_at(loc[:-1])
        allowed = list(parent.model_fields) if parent else []
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        if len(loc) == 1:
            return f"{key}: unknown params.yaml section{hint}; allowed: {', '.join(allowed)}"
        return f"{key}: unknown key{hint}; allowed keys: {', '.join(allowed)}"
    if kind == "value_error":
        text = str(ctx.get("error", err["msg"]))
        if "\x00" in text:
            sub, text = text.split("\x00", 1)
            key = f"{key}{'' if sub.startswith(('[', '.')) else '.'}{sub}" if key else sub.lstrip(".")
        return f"{key}: {text}"
    expected = {
        "float_type": "a number",
        "float_parsing": "a number",
        "int_type": "an integer",
        "int_parsing": "an integer",
        "int_from_float": "an integer",
        "bool_type": "true or false",
        "bool_parsing": "true or false",
        "string_type": "a string",
        "tuple_type": "a list",
        "list_type": "a list",
        "model_type": "a mapping of keys",
        "model_attributes_type": "a mapping of keys",
        "dict_type": "a mapping of keys",
    }.get(kind)
    if expected:
        return f"{key}: expected {expected}, got {_describe_value(given)}"
    if kind == "greater_than_equal":
        return f"{key}: must be >= {ctx['ge']}, got {given}"
    if kind == "less_than_equal":
        return f"{key}: must be <= {ctx['le']}, got {given}"
    if kind == "greater_than":
        return f"{key}: must be > {ctx['gt']}, got {given}"
    if kind == "less_than":
        return f"{key}: must be < {ctx['lt']}, got {given}"
    if kind == "literal_error":
        allowed = ctx["expected"].replace("'", "").replace(" or ", ", ")
        return f"{key}: {given!r} is not one of: {allowed}"
    if kind == "finite_number":
        return f"{key}: expected a finite number, got {given}"
    if kind == "missing" and loc and isinstance(loc[-1], int):
        return f"{key.rsplit('[', 1)[0]}: too few values (position {loc[-1]} is missing)"
    if kind in ("too_short", "too_long"):
        return (
            f"{key}: expected a list of {ctx.get('min_length', ctx.get('max_length'))} values, got "
            f"{ctx.get('actual_length')}"
        )
    return f"{key}: {err['msg']}"


def _validate(values: dict, origin: Mapping[str, str] | None = None) -> Config:
    try:
        return Config.model_validate(values)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        message = _message(err)
        key = message.split(":", 1)[0]
        where = next((v for k, v in (origin or {}).items() if k == key or k.startswith(key + ".")), None)
        raise ConfigError(message + (f" (set by {where})" if where else "")) from None


# ----------------------------------------------------------------------------------- composition
def _expand_dotted(values: Mapping, where: str) -> dict:
    """{'lpt.stage1.lr': 0.1} -> {'lpt': {'stage1': {'lr': 0.1}}}; nested mappings are expanded too."""
    out: dict = {}
    for raw_key, value in values.items():
        parts = str(raw_key).split(".")
        if not all(parts):
            raise ConfigError(f"{where}: {raw_key!r} is not a key (empty part)")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{where}: {raw_key!r} goes through {part!r}, which is not a section")
        value = _expand_dotted(value, where) if isinstance(value, Mapping) else value
        if isinstance(node.get(parts[-1]), dict) and isinstance(value, dict):
            value = _merge(node[parts[-1]], value)
        node[parts[-1]] = value
    return out


def _merge(base: Any, overlay: Any) -> Any:
    """Deep merge of plain data: mappings merge key by key, anything else (lists included) replaces."""
    if isinstance(base, dict) and isinstance(overlay, dict):
        merged = dict(base)
        for k, v in overlay.items():
            merged[k] = _merge(base[k], v) if k in base else v
        return merged
    return copy.deepcopy(overlay)


def _leaf_keys(values: Any, prefix: str = "") -> list[str]:
    if isinstance(values, dict):
        return [k for key, v in values.items() for k in _leaf_keys(v, f"{prefix}{key}.")] or [prefix[:-1]]
    return [prefix[:-1]]


def parse_sets(items: Sequence[str]) -> dict:
    """`key=value` strings (dotted keys, YAML values) as a dotted mapping."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. data.root=/data/places365")
        key, raw = item.split("=", 1)
        try:
            out[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise ConfigError(
                f"--set {item!r}: the value is not valid YAML ({type(e).__name__}); quote it, "
                f"e.g. --set '{key}=\"{raw}\"'"
            ) from None
    return out


def presets_dir(root: Path | None = None) -> Path:
    from lptlib.paths import repo_root

    return (root or repo_root()) / "presets"


def list_presets(root: Path | None = None) -> list[str]:
    return sorted(p.stem for p in presets_dir(root).glob("*.yaml"))


def tuned_file(preset: str, root: Path | None = None) -> Path:
    """The generated tuned layer of `preset`: presets/tuned/<preset>.yaml (`python -m lptlib.tune adopt`)."""
    return presets_dir(root) / "tuned" / f"{preset}.yaml"


TUNED_KEYS = ("arm_lr", "arm_cosine_scale")


def load_tuned(preset: str, root: Path | None = None) -> dict:
    """The tuned layer of `preset` ({} when the preset was never tuned): `arm_lr` and `arm_cosine_scale`."""
    path = tuned_file(preset, root)
    if not path.is_file():
        return {}
    try:
        layer = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e}); regenerate it: python -m lptlib.tune adopt") from None
    if not isinstance(layer, dict) or set(layer) - set(TUNED_KEYS):
        raise ConfigError(
            f"{path}: a tuned layer holds only {', '.join(TUNED_KEYS)} (generated by `python -m lptlib.tune adopt`); "
            "set other keys in params.yaml"
        )
    return layer


def _read_preset(path: Path) -> tuple[dict, str | None]:
    """(the sections of one preset file, the base it names or None)."""
    overlay = yaml.safe_load(path.read_text()) or {}
    if not isinstance(overlay, dict):
        raise ConfigError(f"{path}: a preset is a mapping of params.yaml sections, got {type(overlay).__name__}")
    if "preset" in overlay:
        raise ConfigError(f"{path}: a preset must not name `preset` (params.yaml chooses it)")
    base = overlay.pop("base", None)
    if base is not None and not isinstance(base, str):
        raise ConfigError(f"{path}: base: expected the name of a file in presets/base/, got {_describe_value(base)}")
    return overlay, base


def preset_files(name: str, root: Path | None = None) -> list[Path]:
    """The files preset `name` is composed of, the deepest base first: `presets/<name>.yaml` and the chain of
    `base: <b>` files it names (`presets/base/<b>.yaml`, e.g. the shared paper-scale protocol)."""
    path = presets_dir(root) / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"preset: unknown preset {name!r}; available: {', '.join(list_presets(root))}")
    files = [path]
    while (base := _read_preset(files[0])[1]) is not None:
        bases = presets_dir(root) / "base"
        found = bases / f"{base}.yaml"
        if not found.is_file():
            available = ", ".join(sorted(p.stem for p in bases.glob("*.yaml"))) or "none"
            raise ConfigError(f"{files[0]}: base: unknown base {base!r} (presets/base/; available: {available})")
        if found in files:
            raise ConfigError(f"{files[0]}: base: {base!r} is already part of this preset (a circle of bases)")
        files.insert(0, found)
    return files


def load_preset(name: str, root: Path | None = None) -> dict:
    """The overlay of preset `name`: its `base` files merged in order, then `presets/<name>.yaml` (empty for the
    defaults' own preset)."""
    merged: dict = {}
    for path in preset_files(name, root):
        merged = _merge(merged, _expand_dotted(_read_preset(path)[0], str(path)))
    return merged


def compose(
    params: Mapping | None = None, overrides: Mapping | Sequence[str] | None = None, root: Path | None = None
) -> Config:
    """The resolved configuration: code defaults <- preset overlay <- tuned layer <- `params` <- `overrides`.

    `params`: the params.yaml sections (a section given as null counts as empty); `overrides`: a mapping (nested
    or dotted keys) or `key=value` strings. The preset is `overrides`' or `params`' `preset` key (default:
    miniature)."""
    if params is not None and not isinstance(params, Mapping):
        raise ConfigError(f"params: expected a mapping of params.yaml sections, got {_describe_value(params)}")
    layers = {"params.yaml": _expand_dotted({k: v for k, v in (params or {}).items() if v is not None}, "params.yaml")}
    if overrides:
        sets = parse_sets(overrides) if not isinstance(overrides, Mapping) else overrides
        layers["overrides"] = _expand_dotted(sets, "overrides")
    preset = layers.get("overrides", {}).get("preset", layers["params.yaml"].get("preset", DEFAULT_PRESET))
    if not isinstance(preset, str):
        raise ConfigError(f"preset: expected a preset name, got {_describe_value(preset)}")
    overlay, tuned = load_preset(preset, root), load_tuned(preset, root)
    origin = {k: f"preset {preset}" for k in _leaf_keys(overlay)}
    origin |= {k: f"tuned layer presets/tuned/{preset}.yaml" for k in _leaf_keys(tuned)}
    merged = Config().model_dump()
    for layer in (overlay, tuned, *layers.values()):
        merged = _merge(merged, layer)
    return _validate(merged, origin)


def parse(**sections: Any) -> Config:
    """Validate params.yaml sections (e.g. a notebook's papermill parameters) into a `Config`.

    Example: `cfg = parse(seed=seed, data=data, backbones=backbones)`; `preset=` picks the overlay."""
    return compose(sections)


def load(path: str | Path, overrides: Mapping | Sequence[str] | None = None) -> Config:
    """Read and validate a params file (with its preset and `overrides`). Presets are read from the `presets/`
    beside the file when there is one (a copy of the repository), else from this repository's."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params file {path} does not exist; give the path of a params.yaml")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    beside = path.resolve().parent  # a copy of the repository (its own presets/), else this repository's presets
    return compose(values, overrides, root=beside if (beside / "presets").is_dir() else None)


def save_resolved(cfg: Config, path: str | Path, **extra: Any) -> Path:
    """Write the resolved config (plus the git revision and `extra`) as YAML next to a stage's outputs."""
    doc = {"git_revision": git_revision(Path(path).resolve().parent), **extra, **to_dict(cfg)}
    return atomic_write_bytes(path, yaml.safe_dump(doc, sort_keys=False).encode())


_BOUNDS = (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))


def _bounds(metadata: Sequence[Any]) -> list[str]:
    flat = [x for m in metadata for x in (getattr(m, "metadata", None) or [m])]  # a FieldInfo inside Annotated
    values = [(sign, getattr(m, attr)) for m in flat for attr, sign in _BOUNDS if hasattr(m, attr)]
    return [f"{sign} {v:,}" if isinstance(v, int) else f"{sign} {v:g}" for sign, v in values]


def allowed(annotation: Any, metadata: Sequence[Any] = ()) -> str:
    """What a field accepts, in words: its type and bounds (docs/parameters.md's 'allowed' column)."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return allowed(args[0], [*metadata, *args[1:]])
    if origin is Literal:
        return " &#124; ".join(map(str, args))
    if origin in (Union, types.UnionType):
        kinds = [allowed(a, metadata) for a in args if a is not type(None)]
        return " or ".join(kinds) + (", or null" if type(None) in args else "")
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list of ({allowed(args[0])})"
        kinds = [allowed(a) for a in args]
        return f"{len(args)} values, each ({kinds[0]})" if len(set(kinds)) == 1 else f"[{'; '.join(kinds)}]"
    if origin is dict:
        return f"mapping to ({allowed(args[1])})"
    extra = [str(m) for m in metadata if type(m).__name__ in ("MinLen",)]
    name = {int: "integer", float: "number", bool: "true/false", str: "string"}.get(annotation, str(annotation))
    return ", ".join([name, *_bounds(metadata), *extra])


def describe(model: type[BaseModel] = Config, prefix: str = "", base: Any = None) -> list[tuple[str, str, str, str]]:
    """(key, default, allowed, help) rows of every parameter: the reference table of docs/parameters.md."""
    base = base if base is not None else model()
    rows = []
    for name, f in model.model_fields.items():
        value = getattr(base, name)
        if isinstance(value, BaseModel):
            rows += describe(type(value), f"{prefix}{name}.", value)
        else:
            rows.append(
                (
                    f"{prefix}{name}",
                    yaml.safe_dump(to_dict(value), default_flow_style=True, width=10**6)
                    .strip()
                    .removesuffix("...")
                    .strip(),
                    allowed(f.annotation, f.metadata),
                    f.description or "",
                )
            )
    return rows


DOCS_BEGIN = "<!-- parameters:begin (generated by python -m lptlib.config docs; do not edit) -->"
DOCS_END = "<!-- parameters:end -->"


def parameters_table() -> str:
    rows = ["| key | default (the miniature) | allowed | meaning |", "|---|---|---|---|"]
    rows += [f"| `{k}` | `{v}` | {a} | {h.replace('|', '&#124;')} |" for k, v, a, h in describe()]
    return "\n".join(rows)


def render_docs(text: str) -> str:
    """`text` with the generated parameter table between the markers."""
    if DOCS_BEGIN not in text or DOCS_END not in text:
        raise ConfigError(f"the parameters document lacks the markers {DOCS_BEGIN!r} ... {DOCS_END!r}")
    head, rest = text.split(DOCS_BEGIN, 1)
    tail = rest.split(DOCS_END, 1)[1]
    return f"{head}{DOCS_BEGIN}\n\n{parameters_table()}\n\n{DOCS_END}{tail}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m lptlib.config", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("command", choices=("show", "check", "docs", "presets"))
    ap.add_argument("--params", type=Path, default=None, help="params file (default: <repo>/params.yaml)")
    ap.add_argument("--preset", default=None, help="preview another preset")
    ap.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one parameter (dotted key, YAML value)",
    )
    args = ap.parse_args(argv)
    from lptlib.paths import repo_root

    root = repo_root()
    try:
        if args.command == "presets":
            print("\n".join(list_presets(root)))
            return 0
        if args.command == "docs":
            path = root / "docs" / "parameters.md"
            new = render_docs(path.read_text())
            if new != path.read_text():
                path.write_text(new)
            print(f"wrote {path}")
            return 0
        sets = parse_sets(args.sets)
        if args.preset:
            sets["preset"] = args.preset
        cfg = load(args.params or root / "params.yaml", sets)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.command == "show":
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
    else:
        print(f"ok: preset {cfg.preset!r}, {len(describe())} parameters valid")
    return 0


if __name__ == "__main__":
    sys.exit(main())
