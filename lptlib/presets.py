"""Presets: switch params.yaml between the offline miniature and the paper-scale benchmarks.

A preset file `presets/<name>.yaml` holds whole params.yaml sections, each with every key; applying it
replaces those sections (comments kept), applies `--set key=value` overrides, validates the result and only
then writes params.yaml. Then `dvc repro` runs the pipeline on it. The paper-scale presets hold the data,
the backbones and every training section, each value commented with its source.

    python -m lptlib.presets --list
    python -m lptlib.presets places_lt --set data.root=/data/places365 --set data.split_dir=/data/Places_LT
    python -m lptlib.presets miniature            # back to the default
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import sys
import typing
from pathlib import Path
from typing import Any

import yaml
from ruamel.yaml import YAML

from lptlib.config import Config, ConfigError, parse
from lptlib.paths import repo_root


def presets_dir(root: Path | None = None) -> Path:
    return (root or repo_root()) / "presets"


def list_presets(root: Path | None = None) -> list[str]:
    return sorted(p.stem for p in presets_dir(root).glob("*.yaml"))


def _set_dotted(doc: Any, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = doc
    for k in keys[:-1]:
        if k not in node or not isinstance(node[k], dict):
            raise ConfigError(f"--set {dotted}: {k!r} is not a section here")
        node = node[k]
    node[keys[-1]] = value


def missing_keys(cls: type, values: Any, path: str) -> list[str]:
    """Dotted keys of dataclass `cls` (recursively) that the mapping `values` does not hold. A preset replaces
    whole params.yaml sections, so a key it leaves out would silently fall back to the code default instead of
    the value params.yaml documents; presets must spell every key out. (Types and values are `parse`'s job.)"""
    if not dataclasses.is_dataclass(cls) or not isinstance(values, dict):
        return []
    hints = typing.get_type_hints(cls)
    missing = []
    for f in dataclasses.fields(cls):
        key = f"{path}.{f.name}"
        if f.name not in values:
            missing.append(key)
        else:
            missing += missing_keys(hints[f.name], values[f.name], key)
    return missing


def check_preset(name: str, sections: Any, source: Path | str = "") -> None:
    """A preset file holds a mapping of params.yaml sections, each complete (every key of the section)."""
    where = f"preset {name!r}" + (f" ({source})" if source else "")
    if not isinstance(sections, dict):
        raise ConfigError(f"{where}: expected a mapping of params.yaml sections, got {type(sections).__name__}")
    hints = typing.get_type_hints(Config)
    for section, value in sections.items():
        if section not in hints:
            continue  # parse() names an unknown section
        missing = missing_keys(hints[section], value, section)
        if missing:
            more = f" ... ({len(missing)} in all)" if len(missing) > 8 else ""
            raise ConfigError(f"{where}: section {section!r} lacks {', '.join(missing[:8])}{more}; a preset replaces "
                              "the whole section, so it must give every key (copy the section from params.yaml)")


def apply_preset(name: str, overrides: list[str] = (), params: Path | None = None, root: Path | None = None,
                 write: bool = True) -> dict:
    """Merge preset `name` and `key=value` overrides into params.yaml; validate; write it. Returns the plain dict."""
    root = root or repo_root()
    params = params or root / "params.yaml"
    preset_file = presets_dir(root) / f"{name}.yaml"
    if not preset_file.is_file():
        raise ConfigError(f"unknown preset {name!r}; available: {', '.join(list_presets(root))}")
    rt = YAML()
    rt.preserve_quotes = True
    doc = rt.load(params.read_text())
    preset = rt.load(preset_file.read_text())
    check_preset(name, preset, preset_file)
    for section, value in preset.items():
        doc[section] = value
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. data.root=/data/places365")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({type(e).__name__}); quote it, "
                              f"e.g. --set '{key}=\"{raw}\"'") from None
        _set_dotted(doc, key.strip(), value)
    buf = io.StringIO()
    rt.dump(doc, buf)
    text = buf.getvalue()
    plain = yaml.safe_load(text)
    parse(**plain)  # raises ConfigError naming the key; nothing is written then
    if write:
        params.write_text(text)
    return plain


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lptlib.presets", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", nargs="?", help="preset to apply")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override one parameter after the preset (dotted key, YAML value)")
    ap.add_argument("--params", type=Path, default=None, help="params file to rewrite (default: params.yaml)")
    ap.add_argument("--list", action="store_true", help="list the presets")
    args = ap.parse_args(argv)
    if args.list or not args.name:
        print("\n".join(list_presets()))
        return 0
    try:
        apply_preset(args.name, args.overrides, args.params)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"params.yaml now holds preset {args.name!r}; run `dvc repro` (or `make repro`)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
