"""Where a job's experiment trackers write: the trainer's settings decide, never the request (a client names
trackers in `report_to`, not a URI or a directory, so it cannot make the trainer call an arbitrary server).
Create resolves `report_to` here and keeps the result in the stored spec (`tracking`), which the worker reads
(trainer_service/worker/tracking.py) on this machine or in a Kubernetes pod alike."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import FailedPreconditionError

if TYPE_CHECKING:
    from .settings import TrainerSettings

# tracker -> (the module its library installs, the package that brings it)
TRACKER_LIBRARIES = {"mlflow": ("mlflow", "mlflow-skinny"), "tensorboard": ("tensorboardX", "tensorboardX"),
                     "trackio": ("trackio", "trackio")}


@dataclass(frozen=True)
class TrackingDestinations:
    mlflow_tracking_uri: str | None = None
    mlflow_experiment: str = "vlmforge"
    tensorboard_dir: Path | None = None
    trackio_dir: Path | None = None

    @classmethod
    def from_settings(cls, settings: TrainerSettings) -> TrackingDestinations:
        return cls(settings.mlflow_tracking_uri, settings.mlflow_experiment, settings.tensorboard_dir,
                   settings.trackio_dir)

    def for_job(self, report_to: tuple[str, ...]) -> dict[str, dict[str, str]]:
        """Tracker -> where it writes, for the stored spec; FailedPreconditionError for a tracker this trainer has
        no setting or no library for (the message names the setting or the package)."""
        return {tracker: self._destination(tracker) for tracker in report_to}

    def _destination(self, tracker: str) -> dict[str, str]:
        module, package = TRACKER_LIBRARIES[tracker]
        location = {"mlflow": ("mlflow_tracking_uri", self.mlflow_tracking_uri),
                    "tensorboard": ("tensorboard_dir", self.tensorboard_dir),
                    "trackio": ("trackio_dir", self.trackio_dir)}[tracker]
        setting, value = location
        if value is None:
            raise FailedPreconditionError(
                f"report_to: {tracker} needs the trainer's --{setting.replace('_', '-')} "
                f"(VLMFORGE_TRAINER_{setting.upper()}), which this trainer does not set")
        if importlib.util.find_spec(module) is None:
            raise FailedPreconditionError(f"report_to: {tracker} needs the {package} package, which this trainer's "
                                          "environment lacks")
        if tracker == "mlflow":
            return {"tracking_uri": str(value), "experiment": self.mlflow_experiment}
        return {"dir": str(Path(value).resolve())}
