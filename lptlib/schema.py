"""The base of every params.yaml section model: `Section` (pydantic, unknown keys refused, immutable, finite
numbers), `ConfigError`, and the validators several sections share. Each section's model lives next to the code
that uses it; `lptlib.config` composes them."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator, model_validator

__all__ = [
    "ConfigError",
    "Field",
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


class ConfigError(ValueError):
    """A parameter is wrong; the message names the dotted key and the fix."""


class Section(BaseModel):
    """A params.yaml section: unknown keys refused, immutable, finite numbers only."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def templates_ok(templates: Sequence[str]) -> Sequence[str]:
    if not templates:
        raise ValueError("give at least one template")
    for t in templates:
        if "{name}" not in t:
            raise ValueError(f"template {t!r} has no '{{name}}' placeholder")
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
