"""MLflow tracking: the store (embedded SQLite default or a server), runs, and plots as artifacts."""

from ._mlflow import MLflowTracker, git_commit, iter_runs
from ._plots import plot_contingency, plot_scatter
from ._recorder import RecordingTracker, replay
from ._store import artifact_root_for, default_store_dir, resolve_tracking_uri, start_ui, ui_command

__all__ = [
    "MLflowTracker", "RecordingTracker", "artifact_root_for", "default_store_dir", "git_commit", "iter_runs", "plot_contingency", "plot_scatter",
    "replay", "resolve_tracking_uri", "start_ui", "ui_command",
]
