"""Every fine-tune is an MLflow run: its parameters, its metrics and the candidate archive as an artifact.

The runs live in a local SQLite-backed store (``var/mlflow/mlflow.db``, artifacts beside it in
``var/mlflow/artifacts``) unless ``MLFLOW_TRACKING_URI`` names another; ``make mlflow-ui`` shows them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DIR = ROOT / "var" / "mlflow"
EXPERIMENT = "retrain-{model}"


def tracking_uri(directory: Path = DEFAULT_DIR) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(directory).resolve() / 'mlflow.db'}"


class Run:
    """What the pipeline writes into one run; thin over mlflow's client so the pipeline reads plainly."""

    def __init__(self, client, run_id: str):
        self.client = client
        self.id = run_id

    def params(self, values: dict) -> None:
        for key, value in values.items():
            self.client.log_param(self.id, key, str(value)[:6000])

    def metrics(self, values: dict, step: int = 0) -> None:
        for key, value in values.items():
            if value is not None:
                self.client.log_metric(self.id, key, float(value), step=step)

    def tag(self, key: str, value: str) -> None:
        self.client.set_tag(self.id, key, str(value)[:5000])

    def artifact(self, path: Path, folder: str | None = None) -> None:
        self.client.log_artifact(self.id, str(path), folder)


@contextmanager
def tracked_run(model: str, name: str, directory: Path = DEFAULT_DIR) -> Iterator[Run]:
    """One MLflow run in experiment ``retrain-<model>``; FINISHED when the block ends, FAILED on an exception."""
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    from mlflow.tracking import MlflowClient

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri=tracking_uri(directory))
    experiment_name = EXPERIMENT.format(model=model)
    experiment = client.get_experiment_by_name(experiment_name)
    experiment_id = (
        experiment.experiment_id
        if experiment
        else client.create_experiment(experiment_name, artifact_location=(directory / "artifacts").resolve().as_uri())
    )
    run = client.create_run(experiment_id, run_name=name)
    tracked = Run(client, run.info.run_id)
    try:
        yield tracked
    except BaseException:
        client.set_terminated(run.info.run_id, "FAILED")
        raise
    client.set_terminated(run.info.run_id, "FINISHED")


def runs(model: str, directory: Path = DEFAULT_DIR) -> list[dict]:
    """The model's runs, newest first: id, name, status, params and metrics (what the tests and the demo read)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri(directory))
    experiment = client.get_experiment_by_name(EXPERIMENT.format(model=model))
    if experiment is None:
        return []
    found = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"])
    return [
        {
            "id": run.info.run_id,
            "name": run.info.run_name,
            "status": run.info.status,
            "params": dict(run.data.params),
            "metrics": dict(run.data.metrics),
            "tags": {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")},
            "artifacts": [a.path for a in client.list_artifacts(run.info.run_id)],
        }
        for run in found
    ]
