"""The Kubernetes launcher without a Kubernetes API server, which can't run here: every test stands in for the
API server, and says how.

- The worker Job manifest is validated offline against the Kubernetes 1.37 schemas (kubernetes-validate).
- The reconcile logic runs against recorded Job status sequences (the JSON the API returns as pods start, die
  and the Job completes or fails) served by an in-memory stand-in for the three API calls.
- The real `kubernetes` client talks to a loopback HTTP stub that answers like the API server, so the calls'
  paths, bodies and error codes are the client's own.
- One test runs the manifest's own command line as a local process (standing in for the kubelet): the worker
  trains the tiny model through the worker API and the job succeeds.
"""

from __future__ import annotations

import sys
import os
import subprocess
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from urllib.parse import parse_qs

import kubernetes_validate
import pytest

from trainer_service.domain import JobStatus
from trainer_service.grpc_api.reporting import create_worker_api_server
from trainer_service.job_spec import Hyperparameters, JobSpec, Placement, Toleration
from trainer_service.jobs import JobService
from trainer_service.kubernetes.api import KubernetesJobsApi, WorkerJobExistsError, WorkerJobRejectedError
from trainer_service.kubernetes.launcher import KubernetesLauncher
from trainer_service.kubernetes.manifest import JOB_ID_LABEL, WorkerJobTemplate, job_name, worker_job_manifest
from trainer_service.kubernetes.reconcile import WorkerJobStatus, WorkerPhase
from trainer_service.store import JobStore

from .api_server_stub import ApiServerStubHandler

KUBERNETES_VERSION = "1.37.0"


def _template(**changes) -> WorkerJobTemplate:
    values = dict(namespace="ml", image="registry.example/vlmforge-train:0.1.0",
                  worker_api_address="vlmforge-trainer:50052", shared_pvc="vlmforge-shared",
                  shared_mount_path=PurePosixPath("/shared"), artifacts_dir=PurePosixPath("/shared/artifacts"),
                  secret_name="vlmforge-secrets", service_account="vlmforge-training-worker",
                  training_backend="auto", inference_admin_url="http://vlmforge-inference:8001", default_gpus=1,
                  cpu_request="8", memory_request="64Gi", max_pod_failures=3, ttl_after_finished_s=3600)
    return WorkerJobTemplate(**{**values, **changes})


# -- the manifest ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("placement", [
    Placement(),
    Placement(gpu_count=4, node_selector={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
              tolerations=(Toleration("dedicated", "Equal", "training", "NoSchedule"),)),
])
def test_the_worker_job_is_a_valid_kubernetes_object(placement: Placement) -> None:
    manifest = worker_job_manifest("ftjob-0123456789abcdef01234567", placement, _template())
    kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)


def test_gpus_placement_and_the_worker_command_come_from_the_job() -> None:
    placement = Placement(gpu_count=2, node_selector={"pool": "h100"},
                          tolerations=(Toleration("dedicated", "Equal", "training", "NoSchedule"),))
    manifest = worker_job_manifest("ftjob-abc", placement, _template())
    pod = manifest["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert manifest["metadata"]["name"] == job_name("ftjob-abc") == "vlmforge-ftjob-abc"
    assert manifest["metadata"]["labels"][JOB_ID_LABEL] == "ftjob-abc"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert pod["nodeSelector"] == {"pool": "h100"}
    assert {"key": "dedicated", "operator": "Equal", "value": "training", "effect": "NoSchedule"} in pod["tolerations"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert container["command"][:4] == ["python", "-m", "trainer_service.worker.node_agent", "--standalone"]
    assert "--nproc-per-node=2" in container["command"]
    assert container["command"][container["command"].index("--trainer-address") + 1] == "vlmforge-trainer:50052"
    assert "--database" not in container["command"]  # workers never open the control plane's SQLite file


def test_one_gpu_runs_the_worker_directly_and_cpu_only_requests_none() -> None:
    one = worker_job_manifest("ftjob-a", Placement(), _template())["spec"]["template"]["spec"]["containers"][0]
    assert one["command"][:3] == ["python", "-m", "trainer_service.worker"]
    cpu = worker_job_manifest("ftjob-a", Placement(), _template(default_gpus=0))["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in cpu["containers"][0]["resources"]["limits"] and "tolerations" not in cpu


def test_the_worker_pod_is_locked_down_and_gets_secrets_by_reference() -> None:
    manifest = worker_job_manifest("ftjob-a", Placement(), _template())
    pod = manifest["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["automountServiceAccountToken"] is False and pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "capabilities": {"drop": ["ALL"]}}
    secrets = {e["name"]: e["valueFrom"]["secretKeyRef"]["key"] for e in container["env"] if "valueFrom" in e}
    assert secrets == {"VLMFORGE_TRAINER_WORKER_API_TOKEN": "worker-api-token",
                       "VLMFORGE_TRAINER_INFERENCE_ADMIN_TOKEN": "admin-token"}
    assert not any("value" in e and "token" in e["name"].lower() for e in container["env"])
    # Exit code 3 is "failed for good, already reported": no retry. A drained node does not count.
    rules = manifest["spec"]["podFailurePolicy"]["rules"]
    assert rules[0] == {"action": "FailJob", "onExitCodes": {"containerName": "worker", "operator": "In",
                                                             "values": [3]}}
    assert rules[1]["action"] == "Ignore"


# -- reconciling against recorded Job status sequences ---------------------------------------------------------

# As the API server reports a Job's status (1.31+): SuccessCriteriaMet / FailureTarget come first, then Complete /
# Failed once the pods have terminated.
ACTIVE = {"active": 1, "ready": 1, "startTime": "2026-11-24T03:00:00Z", "terminating": 0,
          "uncountedTerminatedPods": {}}
ONE_POD_OOM_KILLED = {"active": 1, "failed": 1, "ready": 0, "startTime": "2026-11-24T03:00:00Z", "terminating": 0}
TWO_PODS_FAILED = {"active": 1, "failed": 2, "ready": 1, "startTime": "2026-11-24T03:00:00Z", "terminating": 0}
FAILURE_TARGET = {"failed": 4, "startTime": "2026-11-24T03:00:00Z", "terminating": 1, "conditions": [
    {"type": "FailureTarget", "status": "True", "reason": "BackoffLimitExceeded",
     "message": "Job has reached the specified backoff limit"}]}
FAILED = {"failed": 4, "startTime": "2026-11-24T03:00:00Z", "completionTime": None, "conditions": [
    {"type": "FailureTarget", "status": "True", "reason": "BackoffLimitExceeded",
     "message": "Job has reached the specified backoff limit"},
    {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
     "message": "Job has reached the specified backoff limit"}]}
SUCCESS_CRITERIA_MET = {"succeeded": 1, "terminating": 0, "conditions": [
    {"type": "SuccessCriteriaMet", "status": "True", "reason": "CompletionsReached"}]}
COMPLETE = {"succeeded": 1, "completionTime": "2026-11-24T03:20:00Z", "conditions": [
    {"type": "SuccessCriteriaMet", "status": "True", "reason": "CompletionsReached"},
    {"type": "Complete", "status": "True", "reason": "CompletionsReached"}]}
FAILED_BEFORE_1_31 = {"failed": 4, "conditions": [
    {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "backoff limit"}]}


class RecordedJobsApi:
    """Stands in for the API server: remembers what the launcher created and deleted, and answers `statuses()`
    with whatever status the test has set for each Job (a step of a recorded sequence)."""

    def __init__(self):
        self.created: dict[str, dict] = {}
        self.deleted: list[str] = []
        self.status: dict[str, dict] = {}
        self.reject_next = False

    def create(self, manifest: dict) -> None:
        if self.reject_next:
            raise WorkerJobRejectedError('HTTP 422: Job.batch "x" is invalid')
        job_id = manifest["metadata"]["labels"][JOB_ID_LABEL]
        if job_id in self.status:
            raise WorkerJobExistsError(manifest["metadata"]["name"])
        self.created[job_id] = manifest
        self.status[job_id] = {}  # just created: the controller has not written a status yet

    def statuses(self) -> dict[str, dict]:
        return dict(self.status)

    def delete(self, job_id: str) -> None:
        self.deleted.append(job_id)
        self.status.pop(job_id, None)


@pytest.fixture()
def store(tmp_path: Path) -> JobStore:
    return JobStore(tmp_path / "jobs.sqlite3")


def _queued(store: JobStore, **placement) -> str:
    spec = JobSpec("/shared/models/m", "/shared/data/train.jsonl", placement=Placement(**placement))
    job, _ = store.create_job({**spec.to_json(), "model_dir": "/shared/models/m"}, status=JobStatus.QUEUED)
    return job.id


def _launcher(store: JobStore, api, **options) -> KubernetesLauncher:
    return KubernetesLauncher(store, api, _template(), **options)


def _log_events(store: JobStore, job_id: str) -> list[str]:
    return [e.message for e in store.events_after(job_id) if e.kind == "log"]


def test_a_queued_job_becomes_a_worker_job_and_a_reported_success_stands(store: JobStore) -> None:
    api, job_id = RecordedJobsApi(), _queued(store, gpu_count=2)
    launcher = _launcher(store, api)
    launcher.tick()
    assert store.get_job(job_id).status is JobStatus.RUNNING
    assert api.created[job_id]["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"][
        "nvidia.com/gpu"] == "2"
    for status in (ACTIVE, ACTIVE):
        api.status[job_id] = status
        launcher.tick()
        assert store.get_job(job_id).status is JobStatus.RUNNING
    store.transition(job_id, JobStatus.SUCCEEDED, "succeeded: m-ft")  # the worker's report, via the worker API
    for status in (SUCCESS_CRITERIA_MET, COMPLETE):
        api.status[job_id] = status
        launcher.tick()
    assert store.get_job(job_id).status is JobStatus.SUCCEEDED and api.deleted == [] and len(api.created) == 1


def test_pod_failures_are_reported_then_the_backoff_limit_fails_the_job(store: JobStore) -> None:
    api, job_id = RecordedJobsApi(), _queued(store)
    launcher = _launcher(store, api)
    launcher.tick()
    for status in (ACTIVE, ONE_POD_OOM_KILLED, ONE_POD_OOM_KILLED, TWO_PODS_FAILED):
        api.status[job_id] = status
        launcher.tick()
    assert _log_events(store, job_id) == [
        "worker pod failed (1 so far); Kubernetes starts a new one, which resumes from the last checkpoint",
        "worker pod failed (2 so far); Kubernetes starts a new one, which resumes from the last checkpoint"]
    assert store.get_job(job_id).status is JobStatus.RUNNING
    api.status[job_id] = FAILURE_TARGET
    launcher.tick()
    failed = store.get_job(job_id)
    assert failed.status is JobStatus.FAILED and failed.error.code == "worker_failed"
    assert "BackoffLimitExceeded" in failed.error.message and "4 failed pod(s)" in failed.error.message
    api.status[job_id] = FAILED
    launcher.tick()  # the terminal condition arriving later changes nothing
    assert store.get_job(job_id).status is JobStatus.FAILED and len(api.created) == 1


def test_a_restarted_trainer_adopts_running_jobs_instead_of_starting_them_again(store: JobStore) -> None:
    api, job_id = RecordedJobsApi(), _queued(store)
    first = _launcher(store, api, poll_interval_s=0.05)
    first.start()
    _wait_for(lambda: store.get_job(job_id).status is JobStatus.RUNNING)
    first.stop()
    api.status[job_id] = ONE_POD_OOM_KILLED  # a pod died while no trainer was watching
    second = _launcher(store, api)
    second.start()
    _wait_for(lambda: len(_log_events(store, job_id)) == 1)
    second.stop()
    assert store.get_job(job_id).status is JobStatus.RUNNING and len(api.created) == 1 and api.deleted == []


def test_cancelling_deletes_the_worker_job(store: JobStore) -> None:
    api, job_id = RecordedJobsApi(), _queued(store)
    launcher = _launcher(store, api)
    launcher.tick()
    api.status[job_id] = ACTIVE
    JobService(store).cancel(job_id)
    launcher.tick()
    assert api.deleted == [job_id] and store.get_job(job_id).status is JobStatus.CANCELLED
    launcher.tick()
    assert api.deleted == [job_id]


def test_a_vanished_worker_job_is_started_again(store: JobStore) -> None:
    api, job_id = RecordedJobsApi(), _queued(store)
    launcher = _launcher(store, api)
    launcher.tick()
    api.status.pop(job_id)  # someone ran `kubectl delete job`
    launcher.tick()  # requeued, and submitted again in the same poll
    statuses = [e.payload["status"] for e in store.events_after(job_id) if e.kind == "status_changed"]
    assert statuses == ["queued", "running", "queued", "running"]
    assert job_id in api.status


def test_a_completed_worker_job_that_never_reported_fails_the_job(store: JobStore) -> None:
    api, job_id = RecordedJobsApi(), _queued(store)
    launcher = _launcher(store, api)
    launcher.tick()
    api.status[job_id] = COMPLETE
    launcher.tick()
    assert store.get_job(job_id).error.code == "worker_exited"


def test_a_manifest_the_api_rejects_fails_the_job_with_the_reason(store: JobStore) -> None:
    api, job_id = RecordedJobsApi(), _queued(store)
    api.reject_next = True
    _launcher(store, api).tick()
    failed = store.get_job(job_id)
    assert failed.status is JobStatus.FAILED and failed.error.code == "worker_job_rejected"
    assert "422" in failed.error.message


def test_no_more_than_max_concurrent_jobs_run(store: JobStore) -> None:
    api = RecordedJobsApi()
    job_ids = [_queued(store) for _ in range(3)]
    launcher = _launcher(store, api, max_concurrent_jobs=2)
    launcher.tick()
    assert list(api.created) == job_ids[:2]
    store.transition(job_ids[0], JobStatus.SUCCEEDED, "done")
    api.status[job_ids[0]] = COMPLETE
    launcher.tick()
    assert list(api.created) == job_ids


def test_status_parsing_covers_servers_before_1_31() -> None:
    old = WorkerJobStatus.from_api(FAILED_BEFORE_1_31)
    assert old.phase is WorkerPhase.FAILED and old.reason == "BackoffLimitExceeded"
    assert WorkerJobStatus.from_api({}).phase is WorkerPhase.ACTIVE
    assert WorkerJobStatus.from_api(COMPLETE).phase is WorkerPhase.SUCCEEDED


def _wait_for(condition, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


# -- the real kubernetes client against a loopback stand-in for the API server ----------------------------------

class _ApiServerStub(ApiServerStubHandler):
    """Answers the three batch/v1 calls the way the API server does (status codes, Status bodies, JobList)."""

    jobs: dict[str, dict] = {}
    requests: list[tuple[str, str, dict | None]] = []

    def do_POST(self):  # noqa: N802 - http.server's names
        body = self._body()
        self.requests.append(("POST", self.path, body))
        name = body["metadata"]["name"]
        if name in self.jobs:
            return self._status(409, "AlreadyExists")
        if body["spec"]["template"]["spec"]["containers"][0]["image"] == "":
            return self._status(422, "Invalid")
        self.jobs[name] = {**body, "status": {}}
        return self._reply(201, self.jobs[name])

    def do_GET(self):  # noqa: N802
        self.requests.append(("GET", self.path, None))
        self._reply(200, {"kind": "JobList", "apiVersion": "batch/v1", "metadata": {},
                          "items": list(self.jobs.values())})

    def do_DELETE(self):  # noqa: N802
        self.requests.append(("DELETE", self.path, self._body()))
        name = self.path.rsplit("/", 1)[-1].split("?")[0]
        if self.jobs.pop(name, None) is None:
            return self._status(404, "NotFound")
        return self._reply(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})


@pytest.fixture()
def api_server():
    _ApiServerStub.jobs, _ApiServerStub.requests = {}, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ApiServerStub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_the_kubernetes_client_calls(api_server: str) -> None:
    from kubernetes import client

    api = KubernetesJobsApi("ml", api_client=client.ApiClient(client.Configuration(host=api_server)))
    manifest = worker_job_manifest("ftjob-abc", Placement(), _template())
    api.create(manifest)
    method, path, body = _ApiServerStub.requests[-1]
    assert (method, path) == ("POST", "/apis/batch/v1/namespaces/ml/jobs") and body == manifest
    with pytest.raises(WorkerJobExistsError):
        api.create(manifest)
    with pytest.raises(WorkerJobRejectedError, match="422"):
        api.create(worker_job_manifest("ftjob-other", Placement(), _template(image="")))

    _ApiServerStub.jobs["vlmforge-ftjob-abc"]["status"] = ONE_POD_OOM_KILLED
    statuses = api.statuses()
    path, _, query = _ApiServerStub.requests[-1][1].partition("?")
    assert path == "/apis/batch/v1/namespaces/ml/jobs"
    assert parse_qs(query) == {"labelSelector": ["app.kubernetes.io/managed-by=vlmforge-trainer"]}
    assert WorkerJobStatus.from_api(statuses["ftjob-abc"]) == WorkerJobStatus(WorkerPhase.ACTIVE, 1)

    api.delete("ftjob-abc")
    method, target, _ = _ApiServerStub.requests[-1]
    path, _, query = target.partition("?")
    assert (method, path) == ("DELETE", "/apis/batch/v1/namespaces/ml/jobs/vlmforge-ftjob-abc")
    assert parse_qs(query) == {"propagationPolicy": ["Background"]}
    api.delete("ftjob-abc")  # already gone: not an error


# -- the manifest's command, run as the kubelet would run it ----------------------------------------------------

class LocalKubeletJobsApi:
    """Stands in for the API server and a kubelet: `create` starts the Job's container command as a local process
    with the Job's environment (secretKeyRefs resolved from `secrets`), and the Job's status follows the process."""

    def __init__(self, secrets: dict[str, str], log_dir: Path):
        self.secrets, self.log_dir = secrets, log_dir
        self.processes: dict[str, subprocess.Popen] = {}

    def create(self, manifest: dict) -> None:
        (container,) = manifest["spec"]["template"]["spec"]["containers"]
        env = {**os.environ}
        for variable in container["env"]:
            if "valueFrom" in variable:
                key = variable["valueFrom"]["secretKeyRef"]["key"]
                if key in self.secrets:
                    env[variable["name"]] = self.secrets[key]
            elif variable["name"] != "HOME":
                env[variable["name"]] = variable["value"]
        command = [sys.executable if container["command"][0] == "python" else container["command"][0],
                   *container["command"][1:]]
        job_id = manifest["metadata"]["labels"][JOB_ID_LABEL]
        with open(self.log_dir / f"{job_id}.log", "wb") as log:
            self.processes[job_id] = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)

    def statuses(self) -> dict[str, dict]:
        statuses = {}
        for job_id, process in self.processes.items():
            code = process.poll()
            statuses[job_id] = ACTIVE if code is None else COMPLETE if code == 0 else FAILED
        return statuses

    def delete(self, job_id: str) -> None:
        self.processes.pop(job_id).kill()


@pytest.mark.slow
def test_a_job_runs_through_its_worker_job_manifest(tmp_path: Path, tiny_model_dir: Path,
                                                    small_dataset_dir: Path) -> None:
    shared = tmp_path / "shared"  # the RWX volume: every path a worker sees is under it
    (shared / "work").mkdir(parents=True)
    store = JobStore(tmp_path / "control-plane" / "jobs.sqlite3")
    worker_api, port = create_worker_api_server(store, "127.0.0.1:0", token="t0ken")
    kubelet = LocalKubeletJobsApi({"worker-api-token": "t0ken"}, tmp_path)
    template = _template(worker_api_address=f"127.0.0.1:{port}", shared_mount_path=PurePosixPath(shared),
                         artifacts_dir=PurePosixPath(shared / "artifacts"), inference_admin_url=None,
                         default_gpus=0)
    launcher = KubernetesLauncher(store, kubelet, template, poll_interval_s=0.1)
    job = JobService(store, node_placement_unavailable=None).create(JobSpec(
        str(tiny_model_dir), str(small_dataset_dir / "train.jsonl"), test_file=str(small_dataset_dir / "test.jsonl"),
        hyperparameters=Hyperparameters(max_steps=3, batch_size=2, checkpoint_every_steps=2)))
    launcher.start()
    try:
        _wait_for(lambda: store.get_job(job.id).status.is_terminal, timeout_s=240)
    finally:
        launcher.stop()
        worker_api.stop(None)
    final = store.get_job(job.id)
    log = (tmp_path / f"{job.id}.log").read_text()[-3000:]
    assert final.status is JobStatus.SUCCEEDED, log
    assert Path(final.result["merged_model_path"]).is_relative_to(shared / "artifacts")
    assert (shared / "work" / "checkpoints" / job.id).is_dir()
    assert [e.payload["step"] for e in store.events_after(job.id) if e.kind == "progress"] == [1, 2, 3]
