"""MLflow tracking: the store (embedded SQLite default or a server), runs, and plots as artifacts."""

from ._describe import context_tags, dataset_input, git_commit, run_description, system_metrics
from ._mlflow import MLflowTracker, iter_runs
from ._plots import (
    ColourAssignment,
    ContingencySummary,
    contingency_summary,
    match_clusters,
    plot_contingency,
    plot_scatter,
    scatter_colours,
)
from ._recorder import RecordingTracker, replay
from ._store import (
    artifact_root_for,
    default_store_dir,
    experiment_runs_url,
    resolve_tracking_uri,
    start_ui,
    tracking_client,
    ui_command,
    ui_environment,
)

__all__ = [
    "ColourAssignment", "ContingencySummary", "MLflowTracker", "RecordingTracker", "artifact_root_for",
    "context_tags", "contingency_summary", "dataset_input", "default_store_dir", "experiment_runs_url", "git_commit",
    "iter_runs", "match_clusters", "plot_contingency", "plot_scatter", "replay", "resolve_tracking_uri",
    "run_description", "scatter_colours", "start_ui", "system_metrics", "tracking_client", "ui_command",
    "ui_environment",
]
