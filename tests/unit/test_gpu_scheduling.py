"""The local launcher's scheduling rules (trainer_service/gpu_scheduling.py) on plain values, the --gpus setting,
placement.nodes through the proto, and the GPU assignment event as clients see it."""

from __future__ import annotations

import pytest

from trainer_service.domain import JobEvent
from trainer_service.errors import InvalidArgumentError
from trainer_service.gpu_scheduling import Demand, Launch, plan
from trainer_service.grpc_api.convert import event_to_pb, job_to_pb, placement_from_pb
from trainer_service.job_spec import JobSpec, Placement
from trainer_service.settings import TrainerSettings
from vlmforge.trainer.v1 import trainer_pb2 as pb

POOL = ("0", "1", "2", "3")


def test_jobs_take_the_lowest_free_gpus_side_by_side() -> None:
    decided = plan([Demand("a", 2), Demand("b", 1), Demand("c", 1)], POOL, set(), cpu_slot_busy=False)
    assert decided.launches == (Launch("a", (("0", "1"),)), Launch("b", (("2",),)), Launch("c", (("3",),)))


def test_a_job_that_does_not_fit_blocks_every_job_behind_it() -> None:
    decided = plan([Demand("big", 3), Demand("small", 1)], POOL, {"0", "1"}, cpu_slot_busy=False)
    assert decided.launches == () and decided.never_fits == ()


def test_a_multi_node_job_gets_one_slice_per_agent() -> None:
    (launch,) = plan([Demand("mn", 2, nodes=2)], POOL, set(), cpu_slot_busy=False).launches
    assert launch.visible_devices == (("0", "1"), ("2", "3")) and launch.gpus == POOL
    assert plan([Demand("mn", 2, nodes=2)], POOL, {"0"}, cpu_slot_busy=False).launches == ()


def test_more_gpus_than_the_trainer_has_never_fits_and_does_not_block() -> None:
    decided = plan([Demand("huge", 8), Demand("ok", 1)], POOL, set(), cpu_slot_busy=False)
    assert [job for job, _ in decided.never_fits] == ["huge"] and "has 4 (--gpus)" in decided.never_fits[0][1]
    assert decided.launches == (Launch("ok", (("0",),)),)


def test_cpu_jobs_run_one_at_a_time_on_the_cpu_slot() -> None:
    decided = plan([Demand("cpu1", 0), Demand("cpu2", 0)], POOL, set(), cpu_slot_busy=False)
    assert decided.launches == (Launch("cpu1", ((),)),)
    assert plan([Demand("cpu", 0)], POOL, set(), cpu_slot_busy=True).launches == ()


def test_the_gpus_setting_takes_a_comma_list() -> None:
    assert TrainerSettings(gpus="0, 1,2,3").gpu_list == POOL
    assert TrainerSettings().gpu_list is None and TrainerSettings(gpus="").gpu_list == ()
    with pytest.raises(ValueError, match="names a GPU twice"):
        TrainerSettings(gpus="0,1,0")


def test_nodes_travel_through_the_proto_and_are_bounded() -> None:
    placement = placement_from_pb(pb.Placement(gpu_count=2, nodes=4))
    assert placement == Placement(gpu_count=2, nodes=4) and placement.node_count == 4
    assert Placement().node_count == 1
    spec = JobSpec("m", "t.jsonl", placement=placement)
    from trainer_service.domain import Job, JobStatus

    job = Job(id="ftjob-1", status=JobStatus.QUEUED, spec=spec.to_json(), created_at=1.0)
    assert job_to_pb(job).placement.nodes == 4
    assert JobSpec.from_json(spec.to_json()).placement.nodes == 4
    with pytest.raises(InvalidArgumentError, match="placement.nodes"):
        Placement(nodes=65).validated()


def test_the_gpu_assignment_is_a_typed_event() -> None:
    event = JobEvent(job_id="ftjob-1", sequence=3, kind="gpu_assignment", message="GPUs 1,2",
                     payload={"gpus": ["1", "2"], "visible_devices": ["1", "2"]}, created_at=1.0)
    message = event_to_pb(event)
    assert list(message.gpu_assignment.gpus) == ["1", "2"]
    assert list(message.gpu_assignment.visible_devices) == ["1", "2"]


def test_the_launcher_fails_a_job_that_asks_for_more_gpus_than_it_has(tmp_path) -> None:
    import time

    from trainer_service.domain import JobStatus
    from trainer_service.launcher import LocalLauncher
    from trainer_service.store import JobStore

    store = JobStore(tmp_path / "jobs.sqlite3")
    spec = JobSpec("/models/m", "/data/train.jsonl", placement=Placement(gpu_count=2, nodes=2))
    job, _ = store.create_job({**spec.to_json(), "model_dir": "/models/m"}, status=JobStatus.QUEUED)
    launcher = LocalLauncher(store, tmp_path, poll_interval_s=0.02, gpus=("0", "1"))
    launcher.start()
    try:
        deadline = time.monotonic() + 10
        while store.get_job(job.id).status is JobStatus.QUEUED and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        launcher.stop()
    failed = store.get_job(job.id)
    assert failed.status is JobStatus.FAILED and failed.error.code == "not_enough_gpus"
    assert failed.error.message == "placement asks for 4 GPUs (2 x 2 nodes); this trainer has 2 (--gpus)"
