"""Reports: the study's tables (markdown, CSV, LaTeX) and figures, regenerated from the MLflow record."""

from ._analyses import DEFAULT_SUPERVISED, architecture, is_clip, is_random_init, supervised_references
from ._collect import KnnRow, ResultRow, clusterer_setup, collect_knn_rows, collect_rows
from ._report import ReportResult, build_report, expected_from_sweep
from ._tables import Table, mean_ranks

__all__ = ["DEFAULT_SUPERVISED", "KnnRow", "ReportResult", "ResultRow", "Table", "architecture", "build_report",
           "clusterer_setup", "collect_knn_rows", "collect_rows", "expected_from_sweep", "is_clip", "is_random_init",
           "mean_ranks", "supervised_references"]
