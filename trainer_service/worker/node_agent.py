"""`python -m trainer_service.worker.node_agent [torchrun arguments]`: torchrun on one pod of a multi-node job.

Every pod of an Indexed Job (or of a JobSet's Job) runs the same command line, but the c10d rendezvous needs to
know which pod serves its store, and the other agents must reach each pod at an address they can route to.
This adds the two arguments that differ per pod, from what Kubernetes puts in each pod's environment, then runs
torchrun itself (in this process): `--rdzv-conf=is_host=true` on completion index 0 only (the pod the
rendezvous endpoint names), and `--local-addr` = the pod's IP (`VLMFORGE_POD_IP`, from the downward API).

A single-node job on several GPUs runs it too, with `--standalone` (`standalone_command`): no pod arguments then,
but the same exit code mapping, which plain `torchrun` lacks.
"""

from __future__ import annotations

import os
import sys

COMPLETION_INDEX_ENV = "JOB_COMPLETION_INDEX"  # set by the Job controller in every pod of an Indexed Job
POD_IP_ENV = "VLMFORGE_POD_IP"
EXIT_FAILED_FOR_GOOD = 3  # worker.run.main_for: the job is already FAILED; another attempt would fail the same way


def standalone_command(command: list[str]) -> list[str]:
    """`python -m torch.distributed.run --standalone ...` (launcher.worker_command for one node, several GPUs) as
    the same torchrun run through this module, so a worker's exit 3 reaches the pod's exit code."""
    if command[1:4] != ["-m", "torch.distributed.run", "--standalone"]:
        raise ValueError(f"not a standalone torchrun command: {command[:4]}")
    return [command[0], "-m", "trainer_service.worker.node_agent", *command[3:]]


def agent_arguments(argv: list[str], environ: dict[str, str]) -> list[str]:
    """torchrun's arguments for this pod: the pod-specific ones first, then the shared ones."""
    if argv[:1] == ["--standalone"]:
        return list(argv)  # one node: its own rendezvous on localhost, nothing differs per pod
    index = environ.get(COMPLETION_INDEX_ENV)
    if index is None:
        raise SystemExit(f"{COMPLETION_INDEX_ENV} is not set: this runs in a pod of an Indexed Job")
    extra = [f"--rdzv-conf=is_host={'true' if int(index) == 0 else 'false'}"]
    if environ.get(POD_IP_ENV):
        extra.append(f"--local-addr={environ[POD_IP_ENV]}")
    return [*extra, *argv]


def main() -> None:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    try:
        torchrun(agent_arguments(sys.argv[1:], dict(os.environ)))
    except ChildFailedError as error:
        # torchrun exits 1 whatever its workers' codes were; a worker's "failed for good, already reported"
        # must reach the pod's exit code, where the Job's podFailurePolicy fails the job instead of retrying.
        # torch.distributed.elastic's launch_agent raises this with `failures`: local rank -> ProcessFailure,
        # whose `exitcode` is the worker process's own (negative: the signal that ended it).
        if any(failure.exitcode == EXIT_FAILED_FOR_GOOD for failure in error.failures.values()):
            sys.exit(EXIT_FAILED_FOR_GOOD)
        raise


if __name__ == "__main__":
    main()
