"""A real trainer gRPC server on port 0 in this process, called through a real channel: every error case gets
its status code, Watch replays from a cursor, health and reflection answer.

Training itself (the launcher and worker) is not part of the server yet, so jobs stay QUEUED here."""

from __future__ import annotations

import socket
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from trainer_service.grpc_api.server import SERVICE_NAME, create_server
from trainer_service.jobs import JobService
from trainer_service.store import JobStore
from vlmforge.trainer.v1 import trainer_pb2 as pb
from vlmforge.trainer.v1 import trainer_pb2_grpc

MAX_MESSAGE_BYTES = 64 * 1024


@pytest.fixture()
def server(tmp_path: Path):
    jobs = JobService(JobStore(tmp_path / "jobs.sqlite3"), watch_poll_interval_s=0.05)
    running = create_server(jobs, "127.0.0.1:0", max_message_bytes=MAX_MESSAGE_BYTES)
    running.set_serving(True)
    yield running, jobs
    running.server.stop(None)


@pytest.fixture()
def channel(server):
    running, _ = server
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        yield channel


@pytest.fixture()
def client(channel) -> trainer_pb2_grpc.FineTuningServiceStub:
    return trainer_pb2_grpc.FineTuningServiceStub(channel)


@pytest.fixture()
def request_for(tiny_model_dir: Path, small_dataset_dir: Path):
    def make(**overrides) -> pb.CreateFineTuningJobRequest:
        fields = {"model": str(tiny_model_dir), "training_file": str(small_dataset_dir / "train.jsonl"),
                  "test_file": str(small_dataset_dir / "test.jsonl"), "suffix": "demo"}
        fields.update(overrides)
        return pb.CreateFineTuningJobRequest(**fields)
    return make


def _code(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


def test_create_returns_a_queued_job_at_once_and_get_list_agree(client, request_for) -> None:
    job = client.CreateFineTuningJob(request_for(hyperparameters=pb.Hyperparameters(learning_rate=1e-3)))
    assert job.id.startswith("ftjob-") and job.status == pb.JOB_STATUS_QUEUED
    assert job.hyperparameters.learning_rate == 1e-3 and job.hyperparameters.lora_rank == 16
    assert client.GetFineTuningJob(pb.GetFineTuningJobRequest(id=job.id)) == job
    listed = client.ListFineTuningJobs(pb.ListFineTuningJobsRequest(statuses=[pb.JOB_STATUS_QUEUED]))
    assert [j.id for j in listed.jobs] == [job.id]


def test_the_creation_event_says_which_format_each_file_is_read_as_and_why(client, request_for) -> None:
    job = client.CreateFineTuningJob(request_for())
    first = next(iter(client.WatchFineTuningJob(pb.WatchFineTuningJobRequest(id=job.id), timeout=10)))
    assert first.message.startswith("job created, queued; training_file read as conversation (")
    assert "test_file read as conversation (" in first.message


def test_the_same_client_request_id_returns_the_same_job(client, request_for) -> None:
    first = client.CreateFineTuningJob(request_for(client_request_id="abc"))
    second = client.CreateFineTuningJob(request_for(client_request_id="abc"))
    assert first.id == second.id


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"hyperparameters": pb.Hyperparameters(learning_rate=-1)}, "hyperparameters.learning_rate"),
        ({"hyperparameters": pb.Hyperparameters(learning_rate=float("inf"))}, "hyperparameters.learning_rate"),
        ({"model": "/nonexistent/model"}, "model"),
        ({"training_file": "/nonexistent/train.jsonl"}, "training_file"),
        ({"suffix": "NOT OK"}, "suffix"),
        ({"method": 99}, "method"),
    ],
)
def test_invalid_requests_get_invalid_argument_naming_the_field(client, request_for, overrides, field) -> None:
    code, details = _code(lambda: client.CreateFineTuningJob(request_for(**overrides)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith(field + ":")


def test_a_malformed_dataset_line_is_named(client, request_for, small_dataset_dir: Path, tmp_path: Path) -> None:
    bad = small_dataset_dir / "bad_roles.jsonl"
    bad.write_text('{"messages": [{"role": "robot", "content": "hi"}]}\n')
    code, details = _code(lambda: client.CreateFineTuningJob(request_for(training_file=str(bad))))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "bad_roles.jsonl line 1, field messages[0].role" in details


def test_qlora_on_a_cpu_machine_is_a_failed_precondition(client, request_for) -> None:
    code, details = _code(lambda: client.CreateFineTuningJob(request_for(method=pb.FINE_TUNING_METHOD_QLORA)))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "CUDA" in details


def test_unknown_job_is_not_found(client) -> None:
    assert _code(lambda: client.GetFineTuningJob(pb.GetFineTuningJobRequest(id="ftjob-x")))[0] == \
        grpc.StatusCode.NOT_FOUND
    assert _code(lambda: list(client.WatchFineTuningJob(pb.WatchFineTuningJobRequest(id="ftjob-x"))))[0] == \
        grpc.StatusCode.NOT_FOUND


def test_cancel_then_cancel_again_is_a_failed_precondition(client, request_for) -> None:
    job = client.CreateFineTuningJob(request_for())
    cancelled = client.CancelFineTuningJob(pb.CancelFineTuningJobRequest(id=job.id))
    assert cancelled.status == pb.JOB_STATUS_CANCELLED and cancelled.HasField("finished_at")
    code, details = _code(lambda: client.CancelFineTuningJob(pb.CancelFineTuningJobRequest(id=job.id)))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "cancelled" in details


def test_watch_replays_from_the_cursor_and_ends_with_the_job(client, request_for) -> None:
    job = client.CreateFineTuningJob(request_for())
    client.CancelFineTuningJob(pb.CancelFineTuningJobRequest(id=job.id))
    events = list(client.WatchFineTuningJob(pb.WatchFineTuningJobRequest(id=job.id), timeout=10))
    assert [e.sequence for e in events] == [1, 2]
    assert events[-1].status_changed.status == pb.JOB_STATUS_CANCELLED
    resumed = list(client.WatchFineTuningJob(pb.WatchFineTuningJobRequest(id=job.id, after_sequence=1), timeout=10))
    assert [e.sequence for e in resumed] == [2]


def test_messages_over_the_size_limit_are_resource_exhausted(client, request_for) -> None:
    huge = request_for(metadata={"blob": "x" * (MAX_MESSAGE_BYTES + 1)})
    assert _code(lambda: client.CreateFineTuningJob(huge))[0] == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_a_draining_server_is_unavailable_for_new_jobs_and_not_serving(server, channel, client, request_for) -> None:
    running, jobs = server
    running.set_serving(False)
    jobs.draining.set()
    code, _ = _code(lambda: client.CreateFineTuningJob(request_for()))
    assert code == grpc.StatusCode.UNAVAILABLE
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
    assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING


def test_health_and_reflection(channel) -> None:
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    (answer,) = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {service.name for service in answer.list_services_response.service}
    assert SERVICE_NAME in names and "grpc.health.v1.Health" in names


def test_the_image_healthcheck_command_follows_serving(server) -> None:
    from trainer_service import healthcheck

    running, _ = server
    address = f"127.0.0.1:{running.port}"
    assert healthcheck.main([address]) == 0
    running.set_serving(False)
    assert healthcheck.main([address]) == 1
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        assert healthcheck.main([f"127.0.0.1:{unused.getsockname()[1]}", "--timeout-s", "0.5"]) == 1
