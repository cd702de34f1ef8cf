"""The audit log: one structured line per mutating call (create, cancel, upload, delete), on the
`trainer_service.audit` logger, as JSON so log pipelines index it. It names the key by its id, never the key."""

from __future__ import annotations

import json
import logging

from ..domain import Caller

logger = logging.getLogger("trainer_service.audit")


def record(method: str, caller: Caller, outcome: str, **targets: str) -> None:
    """`outcome`: "OK" or the gRPC status code's name; `targets`: job_id / file_id the call acted on."""
    line = {"audit": method, "key_id": caller.key_id, "project": caller.project, "admin": caller.is_admin,
            "outcome": outcome, **{name: value for name, value in targets.items() if value}}
    logger.info(json.dumps(line, sort_keys=True))
