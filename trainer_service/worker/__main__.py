"""`python -m trainer_service.worker --database DB --job-id ID --state-dir DIR`: run one job (the launcher's
child process)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..store import JobStore
from .run import main_for


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m trainer_service.worker", description=__doc__)
    parser.add_argument("--database", type=Path, required=True)
    parser.add_argument("--job-id", required=True)
    parser.add_argument("--state-dir", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s worker: %(message)s")
    sys.exit(main_for(JobStore(args.database), args.job_id, args.state_dir))


if __name__ == "__main__":
    main()
