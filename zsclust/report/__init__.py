"""Reports: the study's tables (markdown, CSV, LaTeX) and figures, regenerated from the MLflow record."""

from ._collect import ResultRow, clusterer_setup, collect_rows
from ._report import ReportResult, build_report, expected_from_sweep
from ._tables import Table, mean_ranks

__all__ = ["ReportResult", "ResultRow", "Table", "build_report", "clusterer_setup", "collect_rows",
           "expected_from_sweep", "mean_ranks"]
