"""The batch/v1 Job that runs one fine-tune: the trainer's image running the worker (torchrun for several GPUs;
for several nodes an Indexed Job with a headless Service, or a JobSet, whose pods meet in a c10d rendezvous),
the shared volume at the same path as in the trainer (datasets, models, checkpoints, artifacts), GPUs and node
placement from the job, and the security context every vlmforge pod has."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from ..deploy import ADMIN_TOKEN_ENV, ADMIN_URL_ENV
from ..job_spec import Placement
from ..launcher import RENDEZVOUS_PORT, Rendezvous, worker_command
from ..worker.backends import BACKEND_ENV
from ..worker.node_agent import EXIT_FAILED_FOR_GOOD, POD_IP_ENV, standalone_command
from ..worker.remote_store import WORKER_API_CA_BUNDLE_ENV, WORKER_API_TOKEN_ENV

JOB_ID_LABEL = "vlmforge.dev/job-id"
MANAGED_BY = {"app.kubernetes.io/managed-by": "vlmforge-trainer"}
WORKER_LABELS = {"app.kubernetes.io/name": "vlmforge", "app.kubernetes.io/part-of": "vlmforge",
                 "app.kubernetes.io/component": "training-worker", **MANAGED_BY}
GPU_RESOURCE = "nvidia.com/gpu"
CONTAINER_NAME = "worker"
WORKER_API_CA_DIR = PurePosixPath("/etc/vlmforge/worker-api-ca")


@dataclass(frozen=True)
class WorkerJobTemplate:
    """What every worker Job shares; the trainer's settings fill it in."""

    namespace: str
    image: str
    worker_api_address: str  # host:port of the trainer's worker API, as pods reach it
    shared_pvc: str
    shared_mount_path: PurePosixPath
    artifacts_dir: PurePosixPath  # under shared_mount_path
    secret_name: str
    service_account: str
    training_backend: str
    inference_admin_url: str | None
    default_gpus: int
    cpu_request: str
    memory_request: str
    max_pod_failures: int  # pods that may die (OOM, node loss) before the Job fails; each resumes from a checkpoint
    ttl_after_finished_s: int  # finished Jobs (and their pod logs) are kept this long
    image_pull_policy: str = "IfNotPresent"
    # The worker API serves TLS: the Secret (the trainer's certificate) whose ca.crt pods verify it with. Only
    # that key is mounted: a worker never holds the trainer's private key.
    worker_api_ca_secret: str | None = None

    @property
    def work_dir(self) -> PurePosixPath:
        return self.shared_mount_path / "work"  # checkpoints/<job id>: any node's next pod resumes from them


def job_name(job_id: str) -> str:
    """A DNS-1123 label: the trainer's ids are `ftjob-` and 24 hex digits."""
    return f"vlmforge-{job_id}".lower()[:63].rstrip("-")


def worker_job_manifest(job_id: str, placement: Placement, template: WorkerJobTemplate) -> dict[str, Any]:
    """One node: a plain Job of one pod. Several (placement.nodes > 1): an Indexed Job of one pod per node, whose
    pods find pod 0 through the headless Service `rendezvous_service_manifest` makes (pod DNS names need it)."""
    labels = {**WORKER_LABELS, JOB_ID_LABEL: job_id}
    rendezvous = None
    if placement.node_count > 1:
        rendezvous = f"{job_name(job_id)}-0.{job_name(job_id)}:{RENDEZVOUS_PORT}"  # <pod hostname>.<subdomain>
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": job_name(job_id), "namespace": template.namespace, "labels": labels},
        "spec": {**_job_spec(job_id, placement, template, labels, rendezvous,
                           subdomain=job_name(job_id) if rendezvous else None),
                 "ttlSecondsAfterFinished": template.ttl_after_finished_s},
    }


def rendezvous_service_manifest(job_id: str, template: WorkerJobTemplate, *, owner_uid: str) -> dict[str, Any]:
    """The headless Service of a multi-node Indexed Job: a DNS name per pod (`<job>-<index>.<job>`), published
    before the pods are ready so the rendezvous can start. Owned by the Job: it goes when the Job goes."""
    labels = {**WORKER_LABELS, JOB_ID_LABEL: job_id}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": job_name(job_id), "namespace": template.namespace, "labels": labels,
                     "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": job_name(job_id),
                                          "uid": owner_uid}]},
        "spec": {"clusterIP": "None", "publishNotReadyAddresses": True, "selector": {JOB_ID_LABEL: job_id},
                 "ports": [{"name": "rendezvous", "port": RENDEZVOUS_PORT, "targetPort": RENDEZVOUS_PORT,
                            "protocol": "TCP"}]},
    }


JOBSET_API_VERSION = "jobset.x-k8s.io/v1alpha2"
JOBSET_REPLICATED_JOB = "node"


def worker_jobset_manifest(job_id: str, placement: Placement, template: WorkerJobTemplate) -> dict[str, Any]:
    """A multi-node job as a JobSet (where the CRD is installed): one replicated Job, Indexed, one pod per node.
    The JobSet controller makes the headless Service and the pod DNS names (`<set>-node-0-<index>.<set>`) itself
    and deletes the whole set, pods included, when the JobSet is deleted."""
    labels = {**WORKER_LABELS, JOB_ID_LABEL: job_id}
    name = job_name(job_id)
    rendezvous = f"{name}-{JOBSET_REPLICATED_JOB}-0-0.{name}:{RENDEZVOUS_PORT}"
    return {
        "apiVersion": JOBSET_API_VERSION,
        "kind": "JobSet",
        "metadata": {"name": name, "namespace": template.namespace, "labels": labels},
        "spec": {
            "network": {"enableDNSHostnames": True, "publishNotReadyAddresses": True},
            "ttlSecondsAfterFinished": template.ttl_after_finished_s,
            # The Job's own backoffLimit and podFailurePolicy decide retries; a failed Job fails the set.
            "failurePolicy": {"maxRestarts": 0},
            "replicatedJobs": [{"name": JOBSET_REPLICATED_JOB, "replicas": 1, "template": {
                "spec": _job_spec(job_id, placement, template, labels, rendezvous)}}],
        },
    }


def _job_spec(job_id: str, placement: Placement, template: WorkerJobTemplate, labels: dict[str, str],
              rendezvous: str | None, *, subdomain: str | None = None) -> dict[str, Any]:
    gpus = placement.gpu_count or template.default_gpus
    nodes = placement.node_count
    spec: dict[str, Any] = {
        "backoffLimit": template.max_pod_failures,  # pods of every node together
        # A worker that failed for good already said why; a drained or preempted node is not the job's fault.
        "podFailurePolicy": {"rules": [
            {"action": "FailJob", "onExitCodes": {"containerName": CONTAINER_NAME, "operator": "In",
                                                  "values": [EXIT_FAILED_FOR_GOOD]}},
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        ]},
        "template": {"metadata": {"labels": labels},
                     "spec": _pod_spec(job_id, gpus, placement, template, rendezvous, subdomain)},
    }
    if nodes > 1:
        # One pod per node, each with a stable index (its DNS name and its torchrun agent's place); a failed pod
        # is replaced only once it is gone, so two pods never hold one index's name.
        spec.update({"completionMode": "Indexed", "completions": nodes, "parallelism": nodes,
                     "podReplacementPolicy": "Failed"})
    return spec


def _pod_spec(job_id: str, gpus: int, placement: Placement, template: WorkerJobTemplate,
              rendezvous: str | None = None, subdomain: str | None = None) -> dict[str, Any]:
    tolerations = [_toleration(t) for t in placement.tolerations]
    if gpus and not any(t.get("key") == GPU_RESOURCE for t in tolerations):
        tolerations.append({"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"})
    spec: dict[str, Any] = {
        "restartPolicy": "Never",  # a new pod per attempt: podFailurePolicy reads each one's exit code
        "serviceAccountName": template.service_account,
        "automountServiceAccountToken": False,  # workers talk to the trainer, never to the Kubernetes API
        "enableServiceLinks": False,  # else Service variables like VLMFORGE_INFERENCE_PORT=tcp://... leak in
        "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [_container(job_id, gpus, template, placement.node_count, rendezvous)],
        "volumes": [
            {"name": "shared", "persistentVolumeClaim": {"claimName": template.shared_pvc}},
            {"name": "tmp", "emptyDir": {}},
            # NCCL and the data loader share tensors through /dev/shm; the runtime's default 64 MiB is too small.
            {"name": "dshm", "emptyDir": {"medium": "Memory"}},
        ],
    }
    if template.worker_api_ca_secret:
        spec["volumes"].append({"name": "worker-api-ca", "secret": {
            "secretName": template.worker_api_ca_secret, "items": [{"key": "ca.crt", "path": "ca.crt"}]}})
    if subdomain:
        spec["subdomain"] = subdomain  # the headless Service: pods get <job>-<index>.<job> DNS names
    if placement.node_selector:
        spec["nodeSelector"] = dict(placement.node_selector)
    if tolerations:
        spec["tolerations"] = tolerations
    return spec


def _container(job_id: str, gpus: int, template: WorkerJobTemplate, nodes: int = 1,
               rendezvous: str | None = None) -> dict[str, Any]:
    resources: dict[str, Any] = {"requests": {"cpu": template.cpu_request, "memory": template.memory_request},
                                 "limits": {"memory": template.memory_request}}
    if gpus:
        resources["requests"][GPU_RESOURCE] = resources["limits"][GPU_RESOURCE] = str(gpus)
    env = [{"name": BACKEND_ENV, "value": template.training_backend},
           {"name": "HOME", "value": "/tmp"},  # caches (Hugging Face, Triton, Unsloth) on the writable emptyDir
           _secret_env(WORKER_API_TOKEN_ENV, template.secret_name, "worker-api-token")]
    if template.inference_admin_url:
        env += [{"name": ADMIN_URL_ENV, "value": template.inference_admin_url},
                _secret_env(ADMIN_TOKEN_ENV, template.secret_name, "admin-token")]
    mounts = [{"name": "shared", "mountPath": str(template.shared_mount_path)},
              {"name": "tmp", "mountPath": "/tmp"},
              {"name": "dshm", "mountPath": "/dev/shm"}]
    if template.worker_api_ca_secret:
        env.append({"name": WORKER_API_CA_BUNDLE_ENV, "value": str(WORKER_API_CA_DIR / "ca.crt")})
        mounts.append({"name": "worker-api-ca", "mountPath": str(WORKER_API_CA_DIR), "readOnly": True})
    ports = []
    agent = None
    if rendezvous is not None:
        # Other pods reach this one's torchrun agent at its pod IP; pod 0 serves the rendezvous store.
        env.append({"name": POD_IP_ENV, "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}})
        ports = [{"name": "rendezvous", "containerPort": RENDEZVOUS_PORT, "protocol": "TCP"}]
        agent = Rendezvous(rendezvous, max_restarts=template.max_pod_failures)
    command = worker_command(job_id, template.work_dir, template.artifacts_dir, gpus or 1,
                             trainer_address=template.worker_api_address, python="python", nodes=nodes,
                             rendezvous=agent)
    if nodes == 1 and gpus > 1:  # torchrun alone exits 1 for a worker's 3: podFailurePolicy would never see it
        command = standalone_command(command)
    container = {
        "name": CONTAINER_NAME,
        "image": template.image,
        "imagePullPolicy": template.image_pull_policy,
        "command": command,
        "workingDir": "/tmp",  # Unsloth writes its compiled kernels to the working directory
        "env": env,
        "resources": resources,
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": mounts,
    }
    if ports:
        container["ports"] = ports
    return container


def _secret_env(name: str, secret: str, key: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": True}}}


def _toleration(toleration) -> dict[str, str]:
    fields = {"key": toleration.key, "operator": toleration.operator, "value": toleration.value,
              "effect": toleration.effect}
    return {name: value for name, value in fields.items() if value}
