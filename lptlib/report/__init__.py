"""Everything that reads results: shot-group metrics (`metrics`), feature analysis (`analysis`), the figures
(`plots`) and the results table built from the metrics files (`table`; `python -m lptlib.report`)."""

from lptlib.report.table import (
    Report,
    ReportError,
    Row,
    best_by_val,
    collect,
    frequency_ordered_confusion,
    markdown_table,
    readme_is_current,
    update_readme,
)

__all__ = [
    "Report",
    "ReportError",
    "Row",
    "best_by_val",
    "collect",
    "frequency_ordered_confusion",
    "markdown_table",
    "readme_is_current",
    "update_readme",
]
