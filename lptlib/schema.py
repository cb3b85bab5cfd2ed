"""The base of every params.yaml section model: `Section` (pydantic, unknown keys refused, immutable, finite
numbers), `ConfigError`, and the validators several sections share. Each section's model lives next to the code
that uses it; `lptlib.config` composes them."""

from __future__ import annotations

import difflib
import types
from collections.abc import Sequence
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationInfo, field_validator, model_validator

__all__ = [
    "ConfigError",
    "BATCH_MAX",
    "EPOCHS_MAX",
    "Field",
    "PROCESSES_MAX",
    "SEED_MAX",
    "Seed",
    "WIDTH_MAX",
    "Resume",
    "RuleError",
    "Section",
    "StrictBool",
    "Templates",
    "distinct",
    "field_validator",
    "model_validator",
    "resume_ok",
    "templates_ok",
    "differences",
    "to_dict",
    "without_resume",
]


#: the largest seed: numpy's RandomState takes seeds below 2**32, and a stage adds offsets below 2**30 to its seed
SEED_MAX = 2**31 - 1
#: the largest count of parallel processes (`workers`, `data.num_workers`): a bound, so a typo never forks thousands
PROCESSES_MAX = 64
#: bounds of the sizes that set an allocation (a batch, a width, a pool), checked before anything is built
BATCH_MAX = 65_536
WIDTH_MAX = 4_096
EPOCHS_MAX = 10_000

Seed = Annotated[int, Field(ge=0, le=SEED_MAX)]


class ConfigError(ValueError):
    """A parameter is wrong; the message names the dotted key and the fix."""


def _bool_for_number(annotation: Any, value: Any, where: str = "") -> str | None:
    """Where `value` holds a boolean where `annotation` expects a number ('' for the value itself, '[1]' or
    '.<key>' for an item), or None: pydantic's lax mode would read `lr: true` as 1.0 and `epochs: true` as 1."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return _bool_for_number(args[0], value, where)
    if origin in (Union, types.UnionType):
        if bool in args:
            return None
        found = (_bool_for_number(a, value, where) for a in args if a is not type(None))
        return next((f for f in found if f is not None), None)
    if origin is None:
        return where if annotation in (int, float) and isinstance(value, bool) else None
    if origin is tuple and isinstance(value, (list, tuple)):
        items = args[:1] * len(value) if len(args) == 2 and args[1] is Ellipsis else args
        found = (_bool_for_number(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(items, value, strict=False)))
        return next((f for f in found if f is not None), None)
    if origin is dict and isinstance(value, dict) and len(args) == 2:
        found = (_bool_for_number(args[1], v, f"{where}.{k}") for k, v in value.items())
        return next((f for f in found if f is not None), None)
    return None


class Section(BaseModel):
    """A params.yaml section: unknown keys refused, immutable, finite numbers only, a boolean never read as a
    number."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_number(cls, value: Any, info: ValidationInfo) -> Any:
        where = _bool_for_number(cls.model_fields[info.field_name].annotation, value)
        if where is not None:
            message = "expected a number, got a boolean (true/false is not a number; write the number)"
            raise RuleError(where, message) if where else ValueError(message)
        return value


def templates_ok(templates: Sequence[str]) -> Sequence[str]:
    if not templates:
        raise ValueError("give at least one template")
    for t in templates:
        if "{name}" not in t:
            raise ValueError(f"template {t!r} has no '{{name}}' placeholder")
        try:
            t.format(name="x")
        except (IndexError, KeyError, ValueError) as e:
            raise ValueError(
                f"template {t!r} cannot be filled with a class name ({type(e).__name__}: {e}): '{{name}}' is its only "
                "placeholder; write '{{' and '}}' for a literal brace"
            ) from None
    return templates


def distinct(values: Sequence[str], what: str) -> Sequence[str]:
    if not values:
        raise ValueError(f"give at least one {what}")
    if len(set(values)) != len(values):
        raise ValueError(f"{list(values)} repeats a{'n' if what[0] in 'aeiou' else ''} {what}")
    return values


Templates = tuple[str, ...]


class RuleError(ValueError):
    """Raised inside a section's validator: names the key (relative to the section) that breaks a rule."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}\x00{message}")


RESUME_HELP = (
    "'auto' (continue this stage's checkpoint when its fingerprint matches), 'never', or the path of a "
    "checkpoint to continue (its fingerprint must match)"
)


def resume_ok(value: str) -> str:
    """'auto', 'never' or the path of an existing checkpoint (relative to the repository root)."""
    if value in ("auto", "never"):
        return value
    from lptlib.paths import resolve

    if not resolve(value).is_file():
        close = difflib.get_close_matches(value, ("auto", "never"), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"{value!r} is neither 'auto', 'never' nor an existing checkpoint file{hint}")
    return value


Resume = Annotated[str, Field(description=RESUME_HELP)]


def to_dict(obj: Any) -> Any:
    """A config (or section) as plain YAML-able data (tuples become lists)."""
    if isinstance(obj, BaseModel):
        obj = obj.model_dump()
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


#: top-level keys no single run's results depend on: the seed lists of the stages and the parallel worker count
RUN_INDEPENDENT = ("seeds", "workers")


def without_resume(cfg: BaseModel) -> dict:
    """The resolved config as plain data minus every `resume` key and the top-level `seeds` and `workers`: what a
    run's results depend on."""

    def strip(d: Any) -> Any:
        return {k: strip(v) for k, v in d.items() if k != "resume"} if isinstance(d, dict) else d

    return {k: v for k, v in strip(to_dict(cfg)).items() if k not in RUN_INDEPENDENT}


def differences(found: Any, expected: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested mappings (a key in one only included)."""
    if isinstance(found, dict) and isinstance(expected, dict):
        return [
            d
            for k in sorted(set(found) | set(expected), key=str)
            for d in differences(found.get(k), expected.get(k), f"{prefix}{k}.")
        ]
    return [] if found == expected else [prefix.rstrip(".")]
