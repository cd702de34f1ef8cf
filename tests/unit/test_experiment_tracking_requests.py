"""`report_to` of a job: what a client may name (INVALID_ARGUMENT naming the field), what the trainer refuses for
want of a setting (FAILED_PRECONDITION naming it), where the stored spec says each tracker writes, and that a
tracker failing inside the worker stops only itself. Through a real gRPC server on port 0 where a status code is
the point."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import grpc
import pytest
from pydantic import ValidationError

from trainer_service.errors import FailedPreconditionError, InvalidArgumentError
from trainer_service.grpc_api.convert import job_to_pb, spec_from_pb
from trainer_service.grpc_api.server import create_server
from trainer_service.job_spec import JobSpec
from trainer_service.jobs import JobService
from trainer_service.settings import TrainerSettings
from trainer_service.store import JobStore
from trainer_service.tracking import TrackingDestinations
from trainer_service.worker.tracking import JobTracking, MlflowTracker, TensorBoardTracker
from vlmforge.trainer.v1 import trainer_pb2 as pb
from vlmforge.trainer.v1 import trainer_pb2_grpc


@pytest.fixture()
def client(tmp_path: Path):
    jobs = JobService(JobStore(tmp_path / "jobs.sqlite3"), tracking=TrackingDestinations(
        tensorboard_dir=tmp_path / "tensorboard"))  # no MLflow server, no trackio directory
    running = create_server(jobs, "127.0.0.1:0", max_message_bytes=64 * 1024)
    running.set_serving(True)
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        yield trainer_pb2_grpc.FineTuningServiceStub(channel)
    running.server.stop(None)


def _refusal(client, report_to: list[str]) -> tuple[grpc.StatusCode, str]:
    # A model and files that do not exist: report_to is checked before either is looked at.
    request = pb.CreateFineTuningJobRequest(model="/nonexistent/model", training_file="/nonexistent/train.jsonl",
                                            report_to=report_to)
    with pytest.raises(grpc.RpcError) as info:
        client.CreateFineTuningJob(request)
    return info.value.code(), info.value.details()


@pytest.mark.parametrize(("report_to", "message"), [
    (["wandb"], "report_to: unknown tracker 'wandb': use tensorboard, mlflow, trackio"),
    (["MLflow"], "report_to: unknown tracker 'MLflow'"),
    ([""], "report_to: unknown tracker ''"),
    (["tensorboard", "tensorboard"], "report_to: names a tracker twice"),
])
def test_an_unknown_or_repeated_tracker_is_invalid_argument_naming_the_field(client, report_to, message) -> None:
    code, details = _refusal(client, report_to)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith(message), details


@pytest.mark.parametrize(("tracker", "setting"), [("mlflow", "--mlflow-tracking-uri"), ("trackio", "--trackio-dir")])
def test_a_tracker_the_trainer_has_no_setting_for_is_refused_at_submission(client, tracker, setting) -> None:
    code, details = _refusal(client, ["tensorboard", tracker])
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert details == (f"report_to: {tracker} needs the trainer's {setting} "
                       f"(VLMFORGE_TRAINER_{setting[2:].replace('-', '_').upper()}), which this trainer does not set")


def test_a_tracker_whose_library_is_missing_is_refused_naming_the_package(monkeypatch, tmp_path: Path) -> None:
    import trainer_service.tracking as tracking

    monkeypatch.setitem(tracking.TRACKER_LIBRARIES, "trackio", ("vlmforge_no_such_module", "trackio"))
    with pytest.raises(FailedPreconditionError, match="^report_to: trackio needs the trackio package, which this "
                                                      "trainer's environment lacks$"):
        TrackingDestinations(trackio_dir=tmp_path).for_job(("trackio",))


def test_report_to_travels_in_the_request_and_is_echoed_on_the_job() -> None:
    spec, _ = spec_from_pb(pb.CreateFineTuningJobRequest(model="m", training_file="t.jsonl",
                                                         report_to=["mlflow", "tensorboard"]))
    assert spec.report_to == ("mlflow", "tensorboard") and spec.validated()
    assert JobSpec.from_json(spec.to_json()).report_to == ("mlflow", "tensorboard")
    assert JobSpec.from_json({"model": "m", "training_file": "t"}).report_to == ()  # jobs stored before it existed
    with pytest.raises(InvalidArgumentError) as info:
        JobSpec("m", "t", report_to=("tensorboardx",)).validated()
    assert info.value.field == "report_to"


def test_the_stored_spec_says_where_each_tracker_writes_from_the_settings_alone(
        tmp_path: Path, tiny_model_dir: Path, small_dataset_dir: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    destinations = TrackingDestinations("http://127.0.0.1:5000", "team-a", tensorboard_dir=tmp_path / "tb")
    job = JobService(store, tracking=destinations).create(JobSpec(
        str(tiny_model_dir), str(small_dataset_dir / "train.jsonl"), report_to=("tensorboard", "mlflow")))
    assert job.spec["tracking"] == {"tensorboard": {"dir": str((tmp_path / "tb").resolve())},
                                    "mlflow": {"tracking_uri": "http://127.0.0.1:5000", "experiment": "team-a"}}
    assert list(job_to_pb(job).report_to) == ["tensorboard", "mlflow"]
    plain = JobService(store, tracking=destinations).create(JobSpec(str(tiny_model_dir),
                                                                    str(small_dataset_dir / "train.jsonl")))
    assert plain.spec["tracking"] == {} and not plain.spec["report_to"]


def test_tracking_settings_are_flags_and_environment_variables(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VLMFORGE_TRAINER_MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    settings = TrainerSettings(tensorboard_dir=tmp_path / "tb")
    assert TrackingDestinations.from_settings(settings) == TrackingDestinations(
        "http://mlflow.internal:5000", "vlmforge", tmp_path / "tb", None)
    with pytest.raises(ValidationError, match="tensorboard_dir /var/tb must be under --shared-mount-path /shared"):
        TrainerSettings(launcher="kubernetes", worker_api_port=50052, worker_api_address="trainer:50052",
                        worker_image="vlmforge-train", state_dir=Path("/shared/state"), tensorboard_dir=Path("/var/tb"))


def test_a_tracker_that_fails_is_dropped_with_one_warning_and_the_others_go_on(tmp_path: Path) -> None:
    """A real MLflow client against a loopback port nothing listens on (a server that is gone), beside a real
    TensorBoard writer."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    warnings: list[str] = []
    tracking = JobTracking([MlflowTracker(f"http://127.0.0.1:{closed_port}", "vlmforge"),
                            TensorBoardTracker(str(tmp_path))], warnings.append)
    started = time.monotonic()
    state = tracking.start("ftjob-1", {"learning_rate": 0.001, "validation_file": ""}, resume={})
    for step in (1, 2):
        tracking.log_step({"step": step, "loss": 1.0 / step, "learning_rate": 1e-3, "samples_per_second": 4.0})
    tracking.finish("succeeded")
    tracking.finish("failed")  # a second call finds no trackers
    assert time.monotonic() - started < 60, "the client's retries are bounded (MLFLOW_CLIENT_DEFAULTS)"
    assert state == {"tensorboard_started": "1"}
    assert len(warnings) == 1 and warnings[0].startswith("mlflow tracking stopped at start: MlflowException: ")

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(tmp_path / "ftjob-1"))
    accumulator.Reload()
    assert [(e.step, e.value) for e in accumulator.Scalars("train/loss")] == [(1, 1.0), (2, 0.5)]
    assert accumulator.Tags()["tensors"] == ["parameters/text_summary", "outcome/text_summary"]
