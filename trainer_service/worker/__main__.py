"""`python -m trainer_service.worker (--database DB | --trainer-address HOST:PORT) --job-id ID --state-dir DIR
[--artifacts-dir DIR]`: run one job. The local launcher's child opens the job store itself (--database); a
Kubernetes Job on another node reports through the trainer's worker API (--trainer-address). The inference
service to notify, the training backend and the worker API token come from the environment
(deploy.ADMIN_URL_ENV / ADMIN_TOKEN_ENV, backends.BACKEND_ENV, WORKER_API_TOKEN_ENV), so no secret shows in `ps`;
so does the CA of a worker API that serves TLS (WORKER_API_CA_BUNDLE_ENV)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from ..deploy import ADMIN_TOKEN_ENV, ADMIN_URL_ENV, InferenceNotifier
from ..store import JobStore
from .backends import BACKEND_ENV, select_backend
from .distributed import Ranks
from .remote_store import WORKER_API_CA_BUNDLE_ENV, WORKER_API_TOKEN_ENV, RemoteJobStore


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m trainer_service.worker", description=__doc__)
    store_location = parser.add_mutually_exclusive_group(required=True)
    store_location.add_argument("--database", type=Path, help="the job store's SQLite file (same machine)")
    store_location.add_argument("--trainer-address", help="the trainer's worker API, e.g. vlmforge-trainer:50052")
    parser.add_argument("--job-id", required=True)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--artifacts-dir", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s worker: %(message)s")
    ranks = Ranks.from_environment()
    ranks.start()  # under torchrun: this process's GPU and the process group, before the model is placed
    # Then Unsloth, when chosen, must be imported before anything imports transformers.
    backend = select_backend(os.environ.get(BACKEND_ENV, "auto"))
    from .run import main_for

    store = (JobStore(args.database) if args.database else
             RemoteJobStore(args.trainer_address, token=os.environ.get(WORKER_API_TOKEN_ENV),
                            ca_bundle=os.environ.get(WORKER_API_CA_BUNDLE_ENV)))
    admin_url = os.environ.get(ADMIN_URL_ENV)
    notifier = InferenceNotifier(store, admin_url, os.environ.get(ADMIN_TOKEN_ENV)) if admin_url else None
    try:
        code = main_for(store, args.job_id, args.state_dir, backend=backend, artifacts_dir=args.artifacts_dir,
                        notifier=notifier, ranks=ranks)
        if code == 0:
            ranks.barrier()  # rank 0 evaluates and writes while the others wait; then all leave together
    finally:
        ranks.finish()
    sys.exit(code)


if __name__ == "__main__":
    main()
