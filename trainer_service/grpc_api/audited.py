"""`@audited("job_id")` on a mutating handler: one audit line per call (auth/audit.py), with the outcome and the
id of the job or file it acted on (the response's `id`, else the request's)."""

from __future__ import annotations

import asyncio
import functools

from ..auth import audit
from .status_codes import code_for


def audited(target: str):
    def decorate(handler):
        method = handler.__name__

        @functools.wraps(handler)
        async def call(self, request, context):
            caller = self.callers.current()
            requested = getattr(request, "id", "") if hasattr(request, "DESCRIPTOR") else ""
            try:
                response = await handler(self, request, context)
            except asyncio.CancelledError:
                audit.record(method, caller, "CANCELLED", **{target: requested})
                raise
            except Exception as error:
                code = code_for(error)
                audit.record(method, caller, code.name if code else "INTERNAL", **{target: requested})
                raise
            audit.record(method, caller, "OK", **{target: getattr(response, "id", "") or requested})
            return response
        return call
    return decorate
