"""Presets: switch params.yaml between the offline miniature and the paper-scale benchmarks.

A preset file `presets/<name>.yaml` holds whole params.yaml sections; applying it replaces those
sections (comments kept), applies `--set key=value` overrides, validates the result and only then
writes params.yaml. Then `dvc repro` runs the pipeline on it.

    python -m lptlib.presets --list
    python -m lptlib.presets places_lt --set data.root=/data/places365 --set data.split_dir=/data/Places_LT
    python -m lptlib.presets miniature            # back to the default
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path
from typing import Any

import yaml
from ruamel.yaml import YAML

from lptlib.config import ConfigError, parse
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
    for section, value in rt.load(preset_file.read_text()).items():
        doc[section] = value
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. data.root=/data/places365")
        key, raw = item.split("=", 1)
        _set_dotted(doc, key.strip(), yaml.safe_load(raw))
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
