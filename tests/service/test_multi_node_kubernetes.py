"""Multi-node jobs on Kubernetes without a cluster (none can run here); each test says what stands in for it.

- Every manifest is validated offline: the Indexed Job and its headless Service against the Kubernetes 1.37
  schemas (kubernetes-validate, strict). kubernetes-validate ships no CRD schemas and no JobSet schema is on this
  machine, so the JobSet is checked against a transcription of its CRD's openAPIV3Schema (jobset.x-k8s.io
  v1alpha2, config/components/crd/bases/jobset.x-k8s.io_jobsets.yaml: the JobSet-level fields), and its Job
  template, which that CRD embeds as a batch/v1 JobTemplateSpec, against the 1.37 Job schema itself.
- The launcher runs against an in-memory stand-in for the API calls: submit, pod failures, cancel, and adoption
  by a restarted trainer (including one that stopped between creating the Job and its Service).
- The real `kubernetes` client talks to a loopback stub of the API server: discovery with and without the JobSet
  CRD, JobSet create / list / delete, and the Service created with the Job as its owner.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
from http.server import ThreadingHTTPServer
from pathlib import PurePosixPath

import kubernetes_validate
import pytest

from trainer_service.domain import JobStatus
from trainer_service.job_spec import JobSpec, Placement
from trainer_service.jobs import JobService
from trainer_service.kubernetes.api import KubernetesJobsApi, WorkerJobExistsError, jobset_status_as_job_status
from trainer_service.kubernetes.launcher import KubernetesLauncher
from trainer_service.kubernetes.manifest import (JOB_ID_LABEL, WorkerJobTemplate, job_name,
                                                 rendezvous_service_manifest, worker_job_manifest,
                                                 worker_jobset_manifest)
from trainer_service.kubernetes.reconcile import WorkerJobStatus, WorkerPhase
from trainer_service.store import JobStore
from trainer_service.worker.node_agent import agent_arguments

from .api_server_stub import ApiServerStubHandler

KUBERNETES_VERSION = "1.37.0"
JOB_ID = "ftjob-0123456789abcdef01234567"
UID = "6f1c2a3e-8a8b-4a52-9a1e-0d1b2c3d4e5f"
TWO_NODES = Placement(gpu_count=8, nodes=2, node_selector={"nvidia.com/gpu.product": "NVIDIA-H200"})


def _template(**changes) -> WorkerJobTemplate:
    values = dict(namespace="ml", image="registry.example/vlmforge-train:0.1.0",
                  worker_api_address="vlmforge-trainer:50052", shared_pvc="vlmforge-shared",
                  shared_mount_path=PurePosixPath("/shared"), artifacts_dir=PurePosixPath("/shared/artifacts"),
                  secret_name="vlmforge-secrets", service_account="vlmforge-training-worker",
                  training_backend="auto", inference_admin_url=None, default_gpus=1, cpu_request="8",
                  memory_request="64Gi", max_pod_failures=3, ttl_after_finished_s=3600)
    return WorkerJobTemplate(**{**values, **changes})


def _container(pod_spec: dict) -> dict:
    (container,) = pod_spec["containers"]
    return container


def _flag(command: list[str], name: str) -> str:
    return next(arg.split("=", 1)[1] for arg in command if arg.startswith(name + "="))


# -- manifests ----------------------------------------------------------------------------------------------------

def test_the_indexed_job_and_its_service_are_valid_kubernetes_objects() -> None:
    kubernetes_validate.validate(worker_job_manifest(JOB_ID, TWO_NODES, _template()), KUBERNETES_VERSION,
                                 strict=True)
    kubernetes_validate.validate(rendezvous_service_manifest(JOB_ID, _template(), owner_uid=UID),
                                 KUBERNETES_VERSION, strict=True)


def test_pods_of_the_indexed_job_find_pod_0_through_the_headless_service() -> None:
    job = worker_job_manifest(JOB_ID, TWO_NODES, _template())
    service = rendezvous_service_manifest(JOB_ID, _template(), owner_uid=UID)
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 2, 2)
    assert spec["podReplacementPolicy"] == "Failed", "never two pods with one index's DNS name"
    assert spec["podFailurePolicy"]["rules"][0]["onExitCodes"]["values"] == [3]
    assert pod["subdomain"] == service["metadata"]["name"] == job_name(JOB_ID)
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"].items() <= job["spec"]["template"]["metadata"]["labels"].items()
    assert service["metadata"]["ownerReferences"] == [{"apiVersion": "batch/v1", "kind": "Job",
                                                       "name": job_name(JOB_ID), "uid": UID}]
    command = _container(pod)["command"]
    # An Indexed Job's pod <index> is named <job>-<index>; with the subdomain, <job>-0.<service> resolves to pod 0.
    assert _flag(command, "--rdzv-endpoint") == f"{job_name(JOB_ID)}-0.{job_name(JOB_ID)}:29500"
    assert command[:3] == ["python", "-m", "trainer_service.worker.node_agent"]
    assert (_flag(command, "--nnodes"), _flag(command, "--nproc-per-node"), _flag(command, "--rdzv-backend"),
            _flag(command, "--max-restarts")) == ("2", "8", "c10d", "3")
    env = {e["name"]: e for e in _container(pod)["env"]}
    assert env["VLMFORGE_POD_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert _container(pod)["resources"]["limits"]["nvidia.com/gpu"] == "8", "GPUs per node"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H200"}


def test_one_node_stays_a_plain_job() -> None:
    spec = worker_job_manifest(JOB_ID, Placement(nodes=1), _template())["spec"]
    assert "completionMode" not in spec and "subdomain" not in spec["template"]["spec"]
    assert _container(spec["template"]["spec"])["command"][:3] == ["python", "-m", "trainer_service.worker"]


def test_each_pod_adds_its_own_rendezvous_role_and_address() -> None:
    shared = ["--nnodes=2", "-m", "trainer_service.worker"]
    assert agent_arguments(shared, {"JOB_COMPLETION_INDEX": "0", "VLMFORGE_POD_IP": "10.0.0.7"}) == [
        "--rdzv-conf=is_host=true", "--local-addr=10.0.0.7", *shared]
    assert agent_arguments(shared, {"JOB_COMPLETION_INDEX": "1"})[0] == "--rdzv-conf=is_host=false"
    with pytest.raises(SystemExit, match="JOB_COMPLETION_INDEX"):
        agent_arguments(shared, {})


def test_a_worker_that_failed_for_good_makes_its_pod_exit_3() -> None:
    """torchrun itself exits 1 for any failed worker; the pod must exit 3 for podFailurePolicy's FailJob rule.
    Real torchrun agents (one node each, c10d on loopback), whose worker is a process exiting 3 or 1."""
    env = {**os.environ, "JOB_COMPLETION_INDEX": "0", "VLMFORGE_POD_IP": "127.0.0.1"}
    agents = {}
    for code in (3, 1):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        agents[code] = subprocess.Popen(
            [sys.executable, "-m", "trainer_service.worker.node_agent", "--nnodes=1", "--nproc-per-node=1",
             "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", f"--rdzv-id=exit-{code}",
             "--max-restarts=0", "--no-python", "sh", "-c", f"exit {code}"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert {code: agent.wait(timeout=600) for code, agent in agents.items()} == {3: 3, 1: 1}


# The JobSet CRD's openAPIV3Schema (jobset.x-k8s.io v1alpha2), JobSet-level fields: what each object may hold,
# what it requires and its enums. Its replicatedJobs[].template is a batch/v1 JobTemplateSpec, validated below
# against the Kubernetes 1.37 Job schema.
JOBSET_TOP_KEYS = {"apiVersion", "kind", "metadata", "spec", "status"}
JOBSET_SPEC_KEYS = {"coordinator", "failurePolicy", "managedBy", "network", "replicatedJobs", "startupPolicy",
                    "successPolicy", "suspend", "ttlSecondsAfterFinished"}
JOBSET_NETWORK_KEYS = {"enableDNSHostnames", "publishNotReadyAddresses", "subdomain"}
JOBSET_FAILURE_POLICY_KEYS = {"maxRestarts", "restartStrategy", "rules"}
REPLICATED_JOB_KEYS = {"dependsOn", "groupName", "name", "replicas", "template"}
REPLICATED_JOB_REQUIRED = {"name", "template"}
JOB_TEMPLATE_KEYS = {"metadata", "spec"}
JOB_TEMPLATE_METADATA_KEYS = {"annotations", "finalizers", "labels", "name", "namespace"}
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def test_the_jobset_matches_its_crd_schema_and_its_job_the_kubernetes_schema() -> None:
    jobset = worker_jobset_manifest(JOB_ID, TWO_NODES, _template())
    assert jobset["apiVersion"] == "jobset.x-k8s.io/v1alpha2" and jobset["kind"] == "JobSet"
    assert set(jobset) <= JOBSET_TOP_KEYS and set(jobset["spec"]) <= JOBSET_SPEC_KEYS
    spec = jobset["spec"]
    assert set(spec["network"]) <= JOBSET_NETWORK_KEYS and all(isinstance(v, bool) for v in spec["network"].values())
    assert set(spec["failurePolicy"]) <= JOBSET_FAILURE_POLICY_KEYS and isinstance(spec["failurePolicy"]["maxRestarts"],
                                                                                    int)
    assert isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] >= 0
    names = [r["name"] for r in spec["replicatedJobs"]]
    assert len(set(names)) == len(names), "replicatedJobs is a list-map keyed by name"
    for replicated in spec["replicatedJobs"]:
        assert REPLICATED_JOB_REQUIRED <= set(replicated) <= REPLICATED_JOB_KEYS
        assert isinstance(replicated["replicas"], int) and DNS_LABEL.match(replicated["name"])
        assert set(replicated["template"]) <= JOB_TEMPLATE_KEYS
        assert set(replicated["template"].get("metadata", {})) <= JOB_TEMPLATE_METADATA_KEYS
        as_job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "x"},
                  "spec": replicated["template"]["spec"]}
        kubernetes_validate.validate(as_job, KUBERNETES_VERSION, strict=True)
    # <jobset>-<replicatedJob>-<job index>-<pod index>, a DNS label, under the subdomain the JobSet makes.
    pod_hostname = f"{job_name(JOB_ID)}-node-0-0"
    assert len(pod_hostname) <= 63 and DNS_LABEL.match(pod_hostname)
    command = _container(spec["replicatedJobs"][0]["template"]["spec"]["template"]["spec"])["command"]
    assert _flag(command, "--rdzv-endpoint") == f"{pod_hostname}.{job_name(JOB_ID)}:29500"
    assert jobset["metadata"]["labels"][JOB_ID_LABEL] == JOB_ID


def test_jobset_status_reads_as_a_job_status() -> None:
    running = {"replicatedJobsStatus": [{"name": "node", "active": 1, "ready": 1, "failed": 0, "succeeded": 0,
                                         "suspended": 0}], "restarts": 0}
    assert WorkerJobStatus.from_api(jobset_status_as_job_status(running)) == WorkerJobStatus(WorkerPhase.ACTIVE, 0)
    completed = {"terminalState": "Completed", "conditions": [
        {"type": "Completed", "status": "True", "reason": "AllJobsCompleted", "message": "jobset completed"}]}
    assert WorkerJobStatus.from_api(jobset_status_as_job_status(completed)).phase is WorkerPhase.SUCCEEDED
    failed = {"terminalState": "Failed", "restarts": 0, "conditions": [
        {"type": "Failed", "status": "True", "reason": "FailedJobs", "message": "jobset failed due to one or more "
         "job failures"}], "replicatedJobsStatus": [{"name": "node", "active": 0, "ready": 0, "failed": 1,
                                                     "succeeded": 0, "suspended": 0}]}
    parsed = WorkerJobStatus.from_api(jobset_status_as_job_status(failed))
    assert (parsed.phase, parsed.failed_pods, parsed.reason) == (WorkerPhase.FAILED, 1, "FailedJobs")


# -- the launcher against an in-memory stand-in for the API -------------------------------------------------------

class RecordedApi:
    """Remembers what the launcher created and deleted (Jobs, JobSets, Services) and answers statuses() with
    what the test set; a Job's Service is owned by it and goes when it is deleted, as garbage collection does."""

    def __init__(self):
        self.objects: dict[str, dict] = {}  # job id -> Job or JobSet manifest
        self.services: dict[str, dict] = {}
        self.status: dict[str, dict] = {}
        self.deleted: list[str] = []

    def create(self, manifest: dict) -> None:
        job_id = manifest["metadata"]["labels"][JOB_ID_LABEL]
        if job_id in self.objects:
            raise WorkerJobExistsError(manifest["metadata"]["name"])
        self.objects[job_id], self.status[job_id] = manifest, {}

    def ensure_rendezvous_service(self, job_id: str, service_manifest) -> None:
        if job_id in self.objects and self.objects[job_id]["kind"] == "Job":
            self.services.setdefault(job_id, service_manifest(f"uid-of-{job_id}"))

    def statuses(self) -> dict[str, dict]:
        return dict(self.status)

    def delete(self, job_id: str) -> None:
        self.deleted.append(job_id)
        for table in (self.objects, self.services, self.status):
            table.pop(job_id, None)


@pytest.fixture()
def store(tmp_path) -> JobStore:
    return JobStore(tmp_path / "jobs.sqlite3")


def _queued(store: JobStore, placement: Placement = TWO_NODES) -> str:
    spec = JobSpec("/shared/models/m", "/shared/data/train.jsonl", placement=placement)
    job, _ = store.create_job({**spec.to_json(), "model_dir": "/shared/models/m"}, status=JobStatus.QUEUED)
    return job.id


def test_a_multi_node_job_becomes_an_indexed_job_with_its_service(store: JobStore) -> None:
    api, job_id = RecordedApi(), _queued(store)
    launcher = KubernetesLauncher(store, api, _template())
    launcher.tick()
    assert api.objects[job_id]["kind"] == "Job" and api.objects[job_id]["spec"]["completions"] == 2
    assert api.services[job_id]["metadata"]["ownerReferences"][0]["uid"] == f"uid-of-{job_id}"
    assert any(e.message == f"running as Kubernetes Indexed Job {job_name(job_id)} on 2 nodes"
               for e in store.events_after(job_id))
    api.status[job_id] = {"active": 2, "failed": 1}  # one node's pod died; Kubernetes starts a new one
    launcher.tick()
    assert store.get_job(job_id).status is JobStatus.RUNNING
    assert [e.message for e in store.events_after(job_id) if e.kind == "log"][-1].startswith("worker pod failed (1")
    JobService(store).cancel(job_id)
    launcher.tick()
    assert api.deleted == [job_id] and job_id not in api.services, "cancel removes every pod's Job and the Service"


def test_a_restarted_trainer_adopts_a_multi_node_job_and_makes_its_missing_service(store: JobStore) -> None:
    api, job_id = RecordedApi(), _queued(store)
    KubernetesLauncher(store, api, _template()).tick()
    api.services.clear()  # the first trainer stopped between creating the Job and its Service
    api.status[job_id] = {"active": 2}
    second = KubernetesLauncher(store, api, _template())
    second.tick()
    assert job_id in api.services and len(api.objects) == 1 and api.deleted == []
    assert store.get_job(job_id).status is JobStatus.RUNNING
    api.status[job_id] = {"failed": 4, "conditions": [{"type": "Failed", "status": "True",
                                                       "reason": "BackoffLimitExceeded", "message": "limit"}]}
    second.tick()
    assert store.get_job(job_id).error.code == "worker_failed"


def test_with_the_jobset_crd_a_multi_node_job_becomes_a_jobset(store: JobStore) -> None:
    api = RecordedApi()
    multi, single = _queued(store), _queued(store, Placement())
    launcher = KubernetesLauncher(store, api, _template(), jobsets=True)
    launcher.tick()
    assert api.objects[multi]["kind"] == "JobSet" and api.objects[single]["kind"] == "Job"
    assert api.services == {}, "the JobSet controller makes its own headless Service"
    api.status[multi] = jobset_status_as_job_status({"conditions": [
        {"type": "Failed", "status": "True", "reason": "PodFailurePolicy", "message": "a pod failed for good"}]})
    launcher.tick()
    assert "PodFailurePolicy" in store.get_job(multi).error.message


# -- the real kubernetes client against a loopback stub of the API server ----------------------------------------

class _Stub(ApiServerStubHandler):
    """Answers discovery, batch/v1 Jobs, v1 Services and jobset.x-k8s.io JobSets as the API server does."""

    serve_jobsets = True
    objects: dict[str, dict] = {}  # path of the collection + "/" + name -> object
    requests: list[tuple[str, str, dict | None]] = []

    def do_GET(self):  # noqa: N802 - http.server's names
        path = self.path.split("?")[0]
        self.requests.append(("GET", self.path, None))
        if path.rstrip("/") == "/apis":
            groups = [{"name": "batch", "versions": [{"groupVersion": "batch/v1", "version": "v1"}],
                       "preferredVersion": {"groupVersion": "batch/v1", "version": "v1"}}]
            if self.serve_jobsets:
                version = {"groupVersion": "jobset.x-k8s.io/v1alpha2", "version": "v1alpha2"}
                groups.append({"name": "jobset.x-k8s.io", "versions": [version], "preferredVersion": version})
            return self._reply(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
        if path in self.objects:
            return self._reply(200, self.objects[path])
        items = [o for key, o in self.objects.items() if key.rsplit("/", 1)[0] == path]
        if not items and not path.endswith(("jobs", "jobsets")):
            return self._status(404, "NotFound")
        return self._reply(200, {"kind": "List", "apiVersion": "v1", "metadata": {}, "items": items})

    def do_POST(self):  # noqa: N802
        body = self._body()
        self.requests.append(("POST", self.path, body))
        key = f"{self.path}/{body['metadata']['name']}"
        if key in self.objects:
            return self._status(409, "AlreadyExists")
        self.objects[key] = {**body, "metadata": {**body["metadata"], "uid": UID}, "status": {}}
        return self._reply(201, self.objects[key])

    def do_DELETE(self):  # noqa: N802
        self.requests.append(("DELETE", self.path, None))
        if self.objects.pop(self.path.split("?")[0], None) is None:
            return self._status(404, "NotFound")
        return self._reply(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})


@pytest.fixture()
def api_client():
    from kubernetes import client

    _Stub.objects, _Stub.requests, _Stub.serve_jobsets = {}, [], True
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield client.ApiClient(client.Configuration(host=f"http://127.0.0.1:{server.server_address[1]}"))
    server.shutdown()


def test_discovery_tells_whether_the_jobset_crd_is_served(api_client) -> None:
    api = KubernetesJobsApi("ml", api_client=api_client)
    assert api.serves_jobsets() is True and _Stub.requests[-1][1].rstrip("/") == "/apis"
    _Stub.serve_jobsets = False
    assert api.serves_jobsets() is False


def test_the_client_creates_lists_and_deletes_jobsets(api_client) -> None:
    api = KubernetesJobsApi("ml", api_client=api_client, jobsets=True)
    manifest = worker_jobset_manifest(JOB_ID, TWO_NODES, _template())
    api.create(manifest)
    collection = "/apis/jobset.x-k8s.io/v1alpha2/namespaces/ml/jobsets"
    assert _Stub.requests[-1][:2] == ("POST", collection) and _Stub.requests[-1][2] == manifest
    with pytest.raises(WorkerJobExistsError):
        api.create(manifest)
    _Stub.objects[f"{collection}/{job_name(JOB_ID)}"]["status"] = {"restarts": 1, "replicatedJobsStatus": [
        {"name": "node", "active": 1, "ready": 1, "failed": 0, "succeeded": 0, "suspended": 0}]}
    assert WorkerJobStatus.from_api(api.statuses()[JOB_ID]) == WorkerJobStatus(WorkerPhase.ACTIVE, 1)
    assert any(path.startswith(collection + "?labelSelector=") for method, path, _ in _Stub.requests
               if method == "GET")
    api.delete(JOB_ID)
    assert f"{collection}/{job_name(JOB_ID)}" not in _Stub.objects
    api.delete(JOB_ID)  # already gone: not an error


def test_the_service_is_created_owned_by_its_job(api_client) -> None:
    api = KubernetesJobsApi("ml", api_client=api_client)
    api.create(worker_job_manifest(JOB_ID, TWO_NODES, _template()))
    build = lambda uid: rendezvous_service_manifest(JOB_ID, _template(), owner_uid=uid)  # noqa: E731
    api.ensure_rendezvous_service(JOB_ID, build)
    method, path, body = _Stub.requests[-1]
    assert (method, path) == ("POST", "/api/v1/namespaces/ml/services")
    assert body["metadata"]["ownerReferences"][0]["uid"] == UID, "the uid the API server gave the Job"
    api.ensure_rendezvous_service(JOB_ID, build)  # already there (409): kept
    api.ensure_rendezvous_service("ftjob-gone", build)  # no Job (404): nothing to do
    assert sum(m == "POST" and p.endswith("/services") for m, p, _ in _Stub.requests) == 2
