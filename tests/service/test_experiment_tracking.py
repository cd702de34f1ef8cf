"""Experiment tracking of a job, read back with the trackers' own tools: a real MLflow tracking server on loopback
(`mlflow server`, SQLite backend) through MlflowClient, and the TensorBoard log through TensorBoard's
EventAccumulator. Jobs are created through a real gRPC server on port 0 and run in this process (run_job), as
the worker runs them; the values read back are checked against the job's own events and artifacts."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest

from trainer_service.domain import JobStatus
from trainer_service.grpc_api.server import create_server
from trainer_service.jobs import JobService
from trainer_service.store import JobStore
from trainer_service.tracking import TrackingDestinations
from trainer_service.worker.run import run_job
from vlmforge.trainer.v1 import trainer_pb2 as pb
from vlmforge.trainer.v1 import trainer_pb2_grpc

pytestmark = pytest.mark.slow
MLFLOW_START_TIMEOUT_S = 600  # ~10 s on an idle 2-core machine; minutes while other work shares the cores
EXPERIMENT = "vlmforge-tracking-test"


class MlflowServer:
    """`mlflow server` on a free loopback port, its own process group (the CLI starts uvicorn as a child)."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.process: subprocess.Popen | None = None
        self.url = ""

    def start(self, attempts: int = 3) -> None:
        """On a free port: one that another process took between the probe and the server's bind is retried."""
        for _ in range(attempts):
            if self._start_once():
                return
        pytest.fail(f"mlflow server exited with {self.process.returncode}: {self._log_tail()}")

    def _start_once(self) -> bool:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        log = open(self.directory / "mlflow-server.log", "ab")  # noqa: SIM115 - handed to the child
        # The tracking server's own background job runner is for GenAI evaluations: off, one process less.
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
        self.process = subprocess.Popen(
            [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
             "--workers", "1", "--backend-store-uri", f"sqlite:///{self.directory / 'mlflow.sqlite3'}",
             "--artifacts-destination", str(self.directory / "artifacts")],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        log.close()
        deadline = time.monotonic() + MLFLOW_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return True
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        self.stop()
        pytest.fail(f"mlflow server did not answer /health in {MLFLOW_START_TIMEOUT_S} s: {self._log_tail()}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def _log_tail(self) -> str:
        return (self.directory / "mlflow-server.log").read_text(errors="replace")[-2000:]


@dataclass
class Trainer:
    client: trainer_pb2_grpc.FineTuningServiceStub
    store: JobStore
    state_dir: Path
    tensorboard_dir: Path


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def trainer(tmp_path_factory, mlflow_server: MlflowServer):
    state = tmp_path_factory.mktemp("tracked-trainer")
    store = JobStore(state / "jobs.sqlite3")
    destinations = TrackingDestinations(mlflow_server.url, EXPERIMENT, tensorboard_dir=state / "tensorboard")
    running = create_server(JobService(store, tracking=destinations), "127.0.0.1:0", max_message_bytes=4 * 1024**2)
    running.set_serving(True)
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        yield Trainer(trainer_pb2_grpc.FineTuningServiceStub(channel), store, state, state / "tensorboard")
    running.server.stop(None)
    store.close()


def _run(trainer: Trainer, request: pb.CreateFineTuningJobRequest) -> pb.FineTuningJob:
    job = trainer.client.CreateFineTuningJob(request)
    trainer.store.transition(job.id, JobStatus.RUNNING, "running in the test process")
    run_job(trainer.store, job.id, trainer.state_dir)
    return trainer.client.GetFineTuningJob(pb.GetFineTuningJobRequest(id=job.id))


def _progress(store: JobStore, job_id: str) -> dict[int, dict]:
    events = store.events_after(job_id, 0, limit=10_000)
    return {e.payload["step"]: e.payload for e in events if e.kind == "progress"}


def _assert_points(points: list[tuple[int, float]], expected: dict[int, float]) -> None:
    """(step, value) pairs as a tracker stored them; TensorBoard keeps float32."""
    assert [step for step, _ in points] == sorted(expected)
    assert [value for _, value in points] == pytest.approx([expected[step] for step in sorted(expected)], rel=1e-6)


def _scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir))
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def _texts(log_dir: Path) -> dict[str, str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir))
    accumulator.Reload()
    return {tag: b"".join(accumulator.Tensors(tag)[-1].tensor_proto.string_val).decode()
            for tag in accumulator.Tags()["tensors"]}


def test_a_job_reports_params_steps_evaluations_and_artifacts_to_mlflow_and_tensorboard(
        trainer: Trainer, mlflow_server: MlflowServer, tiny_model_dir: Path, small_dataset_dir: Path) -> None:
    from mlflow import MlflowClient

    final = _run(trainer, pb.CreateFineTuningJobRequest(
        model=str(tiny_model_dir), training_file=str(small_dataset_dir / "train.jsonl"),
        test_file=str(small_dataset_dir / "test.jsonl"), suffix="tracked", report_to=["mlflow", "tensorboard"],
        hyperparameters=pb.Hyperparameters(max_steps=3, batch_size=4, learning_rate=1e-3)))
    assert final.status == pb.JOB_STATUS_SUCCEEDED, final.error.message
    assert list(final.report_to) == ["mlflow", "tensorboard"]
    progress = _progress(trainer.store, final.id)
    assert sorted(progress) == [1, 2, 3]
    adapter_dir = Path(final.adapter_path)
    loss_plot = adapter_dir.parent / "loss.png"

    client = MlflowClient(mlflow_server.url)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    [run] = client.search_runs([experiment.experiment_id], f"tags.`vlmforge.job_id` = '{final.id}'")
    assert run.info.run_name == final.id and run.info.status == "FINISHED"
    assert trainer.store.get_job(final.id).result["tracking"]["mlflow_run_id"] == run.info.run_id
    params = run.data.params
    assert params["model"] == str(tiny_model_dir) and params["training_file"] == final.training_file
    assert params["hyperparameters.learning_rate"] == "0.001" and params["hyperparameters.max_steps"] == "3"
    assert params["test_samples"] == "8" and params["training_backend"] == "transformers"

    def history(key: str) -> list[tuple[int, float]]:
        return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))

    _assert_points(history("train/loss"), {step: p["loss"] for step, p in progress.items()})
    _assert_points(history("train/learning_rate"), {step: p["learning_rate"] for step, p in progress.items()})
    _assert_points(history("train/samples_per_second"), {step: p["samples_per_second"] for step, p in progress.items()})
    _assert_points(history("train/tokens_per_second"), {step: p["tokens_per_second"] for step, p in progress.items()})
    _assert_points(history("eval_before/exact_match"), {0: final.evaluation_before.exact_match})
    _assert_points(history("eval_after/exact_match"), {3: final.evaluation_after.exact_match})
    _assert_points(history("eval_after/examples"), {3: 8})

    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"adapter", "loss.png"}
    assert {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "adapter")} >= {
        "adapter_config.json", "adapter_model.safetensors"}
    downloaded = Path(client.download_artifacts(run.info.run_id, "", str(trainer.state_dir / "downloaded")))
    assert (downloaded / "loss.png").read_bytes() == loss_plot.read_bytes()
    assert ((downloaded / "adapter" / "adapter_model.safetensors").read_bytes()
            == (adapter_dir / "adapter_model.safetensors").read_bytes())

    log_dir = trainer.tensorboard_dir / final.id
    scalars = _scalars(log_dir)
    _assert_points(scalars["train/loss"], {step: p["loss"] for step, p in progress.items()})
    _assert_points(scalars["train/samples_per_second"], {step: p["samples_per_second"] for step, p in progress.items()})
    _assert_points(scalars["eval_before/exact_match"], {0: final.evaluation_before.exact_match})
    _assert_points(scalars["eval_after/exact_match"], {3: final.evaluation_after.exact_match})
    texts = _texts(log_dir)
    assert "| hyperparameters.learning_rate | 0.001 |" in texts["parameters/text_summary"]
    assert str(adapter_dir) in texts["artifacts/text_summary"] and texts["outcome/text_summary"] == "succeeded"


def test_a_tracking_server_that_goes_away_mid_job_does_not_fail_the_training(
        trainer: Trainer, mlflow_server: MlflowServer, tiny_model_dir: Path, small_dataset_dir: Path) -> None:
    """Last in this module: it stops the module's MLflow server when the job's first step is recorded."""

    def stop_mlflow_after_the_first_step(job_id: str) -> None:
        if trainer.store.get_job(job_id).trained_steps >= 1:
            mlflow_server.stop()

    trainer.store.add_listener(stop_mlflow_after_the_first_step)
    try:
        final = _run(trainer, pb.CreateFineTuningJobRequest(
            model=str(tiny_model_dir), training_file=str(small_dataset_dir / "train.jsonl"),
            report_to=["mlflow", "tensorboard"], hyperparameters=pb.Hyperparameters(max_steps=3, batch_size=2)))
    finally:
        trainer.store.remove_listener(stop_mlflow_after_the_first_step)
    assert final.status == pb.JOB_STATUS_SUCCEEDED, final.error.message
    warnings = [e.message for e in trainer.store.events_after(final.id, 0, limit=10_000)
                if "tracking stopped" in e.message]
    assert len(warnings) == 1 and warnings[0].startswith("mlflow tracking stopped at step 1: "), warnings
    assert "training goes on without it" in warnings[0]
    # The other tracker saw every step.
    assert [step for step, _ in _scalars(trainer.tensorboard_dir / final.id)["train/loss"]] == [1, 2, 3]
