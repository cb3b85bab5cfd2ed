"""Notebook hygiene beyond nbstripout: `python -m lptlib.hygiene notebooks/*.ipynb` (run by `make strip` and
`make repro`, after nbstripout).

nbstripout removes outputs and execution counts but keeps the notebook's kernelspec. A notebook saved from
JupyterLab with another kernel (a conda environment's, say) therefore differs from the committed one in its
metadata alone, and DVC re-runs its stage although every stage runs it with `-k python3` anyway. This resets the
kernelspec to the project's (`python3`); a notebook that already has it is left byte-identical.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}


def normalise_kernel(path: str | Path) -> bool:
    """Set the notebook's kernelspec to the project's; whether the file changed."""
    path = Path(path)
    nb = json.loads(path.read_text(encoding="utf-8"))
    if nb.get("metadata", {}).get("kernelspec") == KERNELSPEC:
        return False
    nb.setdefault("metadata", {})["kernelspec"] = dict(KERNELSPEC)
    # nbformat's layout (nbstripout writes the same): indent 1, sorted keys, a final newline
    path.write_text(json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    return True


def main(argv: list[str] | None = None) -> int:
    paths = sys.argv[1:] if argv is None else argv
    for p in paths:
        if normalise_kernel(p):
            print(f"{p}: kernelspec reset to python3")
    return 0


if __name__ == "__main__":
    sys.exit(main())
