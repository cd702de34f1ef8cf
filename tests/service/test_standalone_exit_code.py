"""A single-node job on several GPUs: plain `torchrun --standalone` exits 1 for any failed worker, so the pod
failure policy's FailJob-on-3 rule never fired for it. Its pod now runs torchrun through worker.node_agent, which
passes a rank's exit 3 on: real torchrun, two CPU processes in a gloo group, rank 1 exiting 3 while rank 0 waits
for it in a collective, as a rank of a failed job would."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path, PurePosixPath

from trainer_service.job_spec import Placement
from trainer_service.kubernetes.manifest import WorkerJobTemplate, worker_job_manifest

WORKER = textwrap.dedent("""
    import os
    import torch.distributed as dist

    dist.init_process_group("gloo")
    dist.barrier()
    if dist.get_rank() == 1:
        os._exit(3)  # worker.run.main_for: failed for good, already reported on the job
    dist.barrier()  # rank 0 waits for its peer until torchrun ends it
""")


def test_a_two_gpu_job_pod_runs_torchrun_through_the_node_agent() -> None:
    template = WorkerJobTemplate(
        namespace="ml", image="registry.example/vlmforge-train:0.1.0", worker_api_address="vlmforge-trainer:50052",
        shared_pvc="vlmforge-shared", shared_mount_path=PurePosixPath("/shared"),
        artifacts_dir=PurePosixPath("/shared/artifacts"), secret_name="vlmforge-secrets",
        service_account="vlmforge-training-worker", training_backend="auto", inference_admin_url="",
        default_gpus=1, cpu_request="8", memory_request="64Gi", max_pod_failures=3, ttl_after_finished_s=3600)
    manifest = worker_job_manifest("ftjob-abc", Placement(gpu_count=2), template)
    (container,) = manifest["spec"]["template"]["spec"]["containers"]
    command = container["command"]
    assert command[:4] == ["python", "-m", "trainer_service.worker.node_agent", "--standalone"]
    assert "--nproc-per-node=2" in command and command[command.index("--job-id") + 1] == "ftjob-abc"
    (fail_job,) = [r for r in manifest["spec"]["podFailurePolicy"]["rules"] if r["action"] == "FailJob"]
    assert fail_job["onExitCodes"]["values"] == [3]


def test_a_rank_that_exits_3_makes_the_standalone_agent_exit_3(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    agent = subprocess.run(
        [sys.executable, "-m", "trainer_service.worker.node_agent", "--standalone", "--nproc-per-node=2",
         "--max-restarts=0", "--monitor-interval=0.05", str(script)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600, text=True,  # torch imports: slow on CI
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert agent.returncode == 3, agent.stdout[-3000:]
