"""`python -m trainer_service.worker.node_agent [torchrun arguments]`: torchrun on one pod of a multi-node job.

Every pod of an Indexed Job (or of a JobSet's Job) runs the same command line, but the c10d rendezvous needs to
know which pod serves its store, and the other agents must reach each pod at an address they can route to.
This adds the two arguments that differ per pod, from what Kubernetes puts in each pod's environment, then runs
torchrun itself (in this process): `--rdzv-conf=is_host=true` on completion index 0 only (the pod the
rendezvous endpoint names), and `--local-addr` = the pod's IP (`VLMFORGE_POD_IP`, from the downward API).
"""

from __future__ import annotations

import os
import sys

COMPLETION_INDEX_ENV = "JOB_COMPLETION_INDEX"  # set by the Job controller in every pod of an Indexed Job
POD_IP_ENV = "VLMFORGE_POD_IP"
EXIT_FAILED_FOR_GOOD = 3  # worker.run.main_for: the job is already FAILED; another attempt would fail the same way


def agent_arguments(argv: list[str], environ: dict[str, str]) -> list[str]:
    """torchrun's arguments for this pod: the pod-specific ones first, then the shared ones."""
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
        if any(failure.exitcode == EXIT_FAILED_FOR_GOOD for failure in error.failures.values()):
            sys.exit(EXIT_FAILED_FOR_GOOD)
        raise


if __name__ == "__main__":
    main()
