"""A job's experiment tracking: each tracker in the job's `report_to`, through its own library, behind one small
interface. Where each one writes is the stored spec's `tracking` (trainer_service/tracking.py: the trainer's
settings, never the request). A tracker that fails (its server gone, a full disk) is dropped with a warning in the
log and a job event; the training goes on without it."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

logger = logging.getLogger(__name__)

# The MLflow client retries a failed call 7 times with exponential backoff (minutes in all) by default: a tracking
# server that is gone would stall training that long. One quick retry, then the tracker is dropped. Its usage
# telemetry would call out of the cluster: off. An operator's own variables win.
MLFLOW_CLIENT_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                          "MLFLOW_HTTP_REQUEST_TIMEOUT": "10", "MLFLOW_DISABLE_TELEMETRY": "true"}
MLFLOW_PARAMS_PER_CALL = 100  # log_batch's limit
MLFLOW_OUTCOMES = {"succeeded": "FINISHED", "failed": "FAILED", "cancelled": "KILLED"}
TRACKIO_PROJECT = "vlmforge"
PROGRESS_METRICS = ("loss", "learning_rate", "samples_per_second", "tokens_per_second", "epoch", "step_seconds")


class Tracker(Protocol):
    """One experiment tracker. `start` returns what a resumed attempt of the job passes back as `resume` (so a job
    restarted from a checkpoint keeps logging into the same run)."""

    name: str

    def start(self, job_id: str, params: dict[str, str], resume: dict[str, str]) -> dict[str, str]: ...
    def log_metrics(self, step: int, metrics: dict[str, float]) -> None: ...
    def log_artifacts(self, adapter_dir: Path, loss_plot: Path) -> None: ...
    def finish(self, outcome: str) -> None: ...  # "succeeded", "failed" or "cancelled"


class MlflowTracker:
    """One MLflow run per job (named after it) in the trainer's experiment, through the tracking client."""

    name = "mlflow"

    def __init__(self, tracking_uri: str, experiment: str):
        for variable, value in MLFLOW_CLIENT_DEFAULTS.items():
            os.environ.setdefault(variable, value)
        from mlflow import MlflowClient

        self.client, self.experiment, self.run_id = MlflowClient(tracking_uri), experiment, ""

    def start(self, job_id: str, params: dict[str, str], resume: dict[str, str]) -> dict[str, str]:
        from mlflow.entities import Param

        if resume.get("mlflow_run_id"):
            self.run_id = resume["mlflow_run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            return {"mlflow_run_id": self.run_id}  # its parameters were logged by the first attempt
        run = self.client.create_run(self._experiment_id(), run_name=job_id, tags={"vlmforge.job_id": job_id})
        self.run_id = run.info.run_id
        pairs = [Param(key, value) for key, value in params.items()]
        for first in range(0, len(pairs), MLFLOW_PARAMS_PER_CALL):
            self.client.log_batch(self.run_id, params=pairs[first:first + MLFLOW_PARAMS_PER_CALL])
        return {"mlflow_run_id": self.run_id}

    def _experiment_id(self) -> str:
        from mlflow.exceptions import MlflowException

        if (found := self.client.get_experiment_by_name(self.experiment)) is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(self.experiment)
        except MlflowException:  # another job's worker created it a moment ago
            return self.client.get_experiment_by_name(self.experiment).experiment_id

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now_ms = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(key, value, now_ms, step) for key, value in metrics.items()])

    def log_artifacts(self, adapter_dir: Path, loss_plot: Path) -> None:
        self.client.log_artifacts(self.run_id, str(adapter_dir), "adapter")
        self.client.log_artifact(self.run_id, str(loss_plot))

    def finish(self, outcome: str) -> None:
        self.client.set_terminated(self.run_id, status=MLFLOW_OUTCOMES[outcome])


class TensorBoardTracker:
    """Event files under <tensorboard_dir>/<job id> (TensorBoard's run name), written with tensorboardX."""

    name = "tensorboard"

    def __init__(self, root: str):
        self.root, self.writer = Path(root), None

    def start(self, job_id: str, params: dict[str, str], resume: dict[str, str]) -> dict[str, str]:
        from tensorboardX import SummaryWriter

        # A resumed attempt appends a new event file to the same run; TensorBoard shows a step redone once more.
        self.writer = SummaryWriter(str(self.root / job_id), flush_secs=10)
        if not resume.get("tensorboard_started"):
            self.writer.add_text("parameters", _markdown_table(params))
        return {"tensorboard_started": "1"}

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)

    def log_artifacts(self, adapter_dir: Path, loss_plot: Path) -> None:
        # TensorBoard keeps no files: the run says where the artifacts are.
        self.writer.add_text("artifacts", _markdown_table({"adapter": str(adapter_dir), "loss plot": str(loss_plot)}))

    def finish(self, outcome: str) -> None:
        self.writer.add_text("outcome", outcome)
        self.writer.close()


class TrackioTracker:
    """A trackio run per job in its local database under TRACKIO_DIR (no Space: nothing leaves the machine). An
    optional extra (README, "Track experiments"): every trackio release caps pillow below the 13 we pin."""

    name = "trackio"

    def __init__(self, directory: str):
        os.environ["TRACKIO_DIR"] = directory  # read when trackio is imported
        import trackio

        self.trackio, self.run, self.job_id = trackio, None, ""

    def start(self, job_id: str, params: dict[str, str], resume: dict[str, str]) -> dict[str, str]:
        self.job_id = job_id
        self.run = self.trackio.init(project=TRACKIO_PROJECT, name=job_id, config=params, resume="allow")
        return {}

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step)

    def log_artifacts(self, adapter_dir: Path, loss_plot: Path) -> None:
        self.run.log_artifact(adapter_dir, name=f"{self.job_id}-adapter", type="model")
        self.run.log_artifact(loss_plot, name=f"{self.job_id}-loss-plot", type="plot")

    def finish(self, outcome: str) -> None:
        self.run.finish()


_TRACKERS: dict[str, Callable[[dict[str, str]], Tracker]] = {
    "mlflow": lambda where: MlflowTracker(where["tracking_uri"], where["experiment"]),
    "tensorboard": lambda where: TensorBoardTracker(where["dir"]),
    "trackio": lambda where: TrackioTracker(where["dir"]),
}


class JobTracking:
    """Every tracker of one job, called together; a tracker that raises is dropped (`warn` says so) and the rest
    go on. Rank 0 only: under torchrun the other ranks get `off()`."""

    def __init__(self, trackers: list[Tracker], warn: Callable[[str], None]):
        self.trackers, self.warn = trackers, warn
        self.last_step = 0

    @classmethod
    def off(cls) -> JobTracking:
        return cls([], lambda message: None)

    @classmethod
    def open(cls, destinations: dict[str, dict[str, str]], warn: Callable[[str], None]) -> JobTracking:
        """`destinations`: the stored spec's `tracking` (tracker -> where it writes)."""
        tracking = cls([], warn)
        for name, where in destinations.items():
            tracking._call(name, "start", lambda: tracking.trackers.append(_TRACKERS[name](where)))
        return tracking

    def start(self, job_id: str, params: dict[str, Any], resume: dict[str, str]) -> dict[str, str]:
        """Logs the job's parameters; returns the state a resumed attempt passes back as `resume`."""
        as_text = {key: str(value) for key, value in params.items() if value not in (None, "", ())}
        state: dict[str, str] = dict(resume)
        self._each("start", lambda tracker: state.update(tracker.start(job_id, as_text, resume)))
        return state

    def log_step(self, progress: dict[str, Any]) -> None:
        """One optimizer step: a worker.train.Progress as a dict (the job's progress event payload)."""
        self.last_step = int(progress["step"])
        metrics = {f"train/{name}": float(progress[name]) for name in PROGRESS_METRICS if name in progress}
        self._each(f"step {self.last_step}", lambda tracker: tracker.log_metrics(self.last_step, metrics))

    def log_eval(self, phase: str, step: int, scores: dict[str, float]) -> None:
        """`before` / `after` (the test file) or `validation`, as `eval_<phase>/<score>` at the step it scored
        (`after`: the last step trained)."""
        step = self.last_step if phase == "after" else step
        metrics = {f"eval_{phase}/{name}": float(value) for name, value in scores.items()}
        self._each(f"evaluation {phase}", lambda tracker: tracker.log_metrics(step, metrics))

    def log_artifacts(self, adapter_dir: Path, loss_plot: Path) -> None:
        self._each("artifacts", lambda tracker: tracker.log_artifacts(adapter_dir, loss_plot))

    def finish(self, outcome: str) -> None:
        """Once: later calls (a failure after success was logged) find no trackers."""
        self._each("finish", lambda tracker: tracker.finish(outcome))
        self.trackers = []

    def _each(self, what: str, call: Callable[[Tracker], None]) -> None:
        for tracker in list(self.trackers):
            if not self._call(tracker.name, what, lambda: call(tracker)):
                self.trackers.remove(tracker)

    def _call(self, name: str, what: str, call: Callable[[], None]) -> bool:
        try:
            call()
            return True
        except Exception as error:  # noqa: BLE001 - tracking never fails a job; the log has the traceback
            logger.warning("%s tracking failed (%s)", name, what, exc_info=True)
            reason = (str(error).strip().splitlines() or [""])[0][:300]
            self.warn(f"{name} tracking stopped at {what}: {type(error).__name__}: {reason}; training goes on "
                      "without it")
            return False


class TrackedRecords:
    """The worker's job store, with what the job reports also sent to its trackers: each step's progress and each
    evaluation (before, after, validation). Everything else passes through."""

    def __init__(self, records, tracking: JobTracking):
        self.records, self.tracking = records, tracking

    def get_job(self, job_id: str):
        return self.records.get_job(job_id)

    def append_event(self, job_id: str, kind: str, message: str, payload: dict[str, Any] | None = None):
        event = self.records.append_event(job_id, kind, message, payload)
        if kind == "evaluation" and payload:
            self.tracking.log_eval(payload["phase"], payload.get("step", 0), payload["scores"])
        return event

    def record_progress(self, job_id: str, trained_steps: int, total_steps: int, message: str,
                        payload: dict[str, Any]):
        event = self.records.record_progress(job_id, trained_steps, total_steps, message, payload)
        self.tracking.log_step(payload)
        return event

    def merge_result(self, job_id: str, result: dict[str, Any]) -> None:
        self.records.merge_result(job_id, result)

    def transition(self, job_id: str, status, message: str, **kwargs):
        return self.records.transition(job_id, status, message, **kwargs)


def _markdown_table(values: dict[str, str]) -> str:
    rows = "\n".join(f"| {key} | {str(value).replace('|', '/')} |" for key, value in values.items())
    return f"| name | value |\n|---|---|\n{rows}"
