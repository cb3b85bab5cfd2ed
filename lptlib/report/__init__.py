"""Everything that reads results: shot-group metrics (`metrics`), feature analysis (`analysis`), the figures
(`plots`), the claims table with paired intervals over seeds (`claims`) and the results report built from the
per-seed metrics files (`table`; `python -m lptlib.report`)."""

from lptlib.report.table import (
    STAGES,
    Report,
    ReportError,
    Row,
    best_by_val,
    collect,
    frequency_ordered_confusion,
    markdown_table,
    plain_counterpart,
    readme_is_current,
    results_markdown,
    select_by_val,
    update_readme,
)

__all__ = [
    "STAGES",
    "Report",
    "ReportError",
    "Row",
    "best_by_val",
    "collect",
    "frequency_ordered_confusion",
    "markdown_table",
    "plain_counterpart",
    "readme_is_current",
    "results_markdown",
    "select_by_val",
    "update_readme",
]
