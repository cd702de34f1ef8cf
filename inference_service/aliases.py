"""Model aliases in the inference service: `model: <alias>` is served by the alias's target (an adapter, or the
base model), `/v1/models` lists each alias, `vlmforge_inference_alias_info{alias,adapter}` says where each points,
and /admin/v1/aliases sets, shows and rolls back (vlmforge.aliases keeps the files, with every change).

Every frontend process reads the alias files itself: one stat of the alias's directory per request tells whether
it changed (a new version file changes the directory's mtime), so a change made by the trainer or by another
frontend's admin API is seen by the next request, in every process. A request resolves its alias once, when it
arrives, and its body then names the target: a switch affects new requests only, and a request in flight finishes
on the adapter it started with (the old adapter stays loaded).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass

from fastapi import APIRouter
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vlmforge.aliases import (ALIAS_NAME_RULE, AliasError, AliasNotFound, AliasStore, AliasVersion, is_valid_alias_name,
                              rollback_change)

from .adapters import AdapterManager
from .errors import AdminDisabled, InvalidRequest, ModelNotFound
from .metrics import InferenceMetrics

# Directory mtimes tick coarsely (a jiffy on many kernels): a change made within the same tick as a read leaves the
# mtime as it was, so a read is trusted only if it was made well after the mtime it saw (git's "racily clean"
# rule: compare with when the cache was filled, not with now).
RACY_WINDOW_NS = 1_000_000_000
ADMIN_ACTOR = "admin"

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Cached:
    mtime_ns: int
    read_at_ns: int  # wall clock just before the files were read
    entry: AliasVersion | None


class AliasResolver:
    """The alias's current version, re-read whenever its directory changed; never trusted for longer."""

    def __init__(self, store: AliasStore, base_model_name: str):
        self.store = store
        self.base_model_name = base_model_name
        self._cache: dict[str, _Cached] = {}

    def current(self, alias: str) -> AliasVersion | None:
        if not is_valid_alias_name(alias):
            return None
        directory = self.store.root / alias
        try:
            mtime_ns = os.stat(directory).st_mtime_ns
        except (FileNotFoundError, NotADirectoryError):
            self._cache.pop(alias, None)
            return None
        cached = self._cache.get(alias)
        if cached is not None and cached.mtime_ns == mtime_ns and cached.read_at_ns - mtime_ns > RACY_WINDOW_NS:
            return cached.entry
        read_at_ns = time.time_ns()
        entry = self.store.current(alias)
        self._cache[alias] = _Cached(mtime_ns, read_at_ns, entry)
        return entry

    def served_name(self, entry: AliasVersion) -> str:
        """The model name the engine serves the alias's target under."""
        return entry.target if entry.target is not None else self.base_model_name

    def all_current(self) -> list[AliasVersion]:
        return [entry for name in self.store.names() if (entry := self.current(name)) is not None]


def sync_alias_metrics(resolver: AliasResolver, metrics: InferenceMetrics) -> None:
    """Brings `vlmforge_inference_alias_info` to the files' state; called on each scrape, in whichever frontend
    serves it."""
    try:
        current = resolver.all_current()
        metrics.alias_targets({entry.alias: resolver.served_name(entry) for entry in current},
                              {(entry.alias, resolver.served_name(version)) for entry in current
                               for version in resolver.store.history(entry.alias)})
    except (OSError, ValueError):  # the scrape still answers; the alias files' problem is logged
        logger.warning("could not read the alias files for vlmforge_inference_alias_info", exc_info=True)


async def models_with_aliases(app: ASGIApp, scope: Scope, receive: Receive, send: Send,
                              resolver: AliasResolver) -> None:
    """vLLM's own /v1/models answer, with one card per alias added (parent: the model it serves)."""
    start: dict = {}
    body = bytearray()

    async def capture(message: Message) -> None:
        if message["type"] == "http.response.start":
            start.update(message)
        elif message["type"] == "http.response.body":
            body.extend(message.get("body", b""))

    await app(scope, receive, capture)
    payload = bytes(body)
    if start.get("status") == 200:
        listing = json.loads(payload)
        listing.setdefault("data", []).extend(_card(entry, resolver) for entry in resolver.all_current())
        payload = json.dumps(listing).encode()
    headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
    await send({"type": "http.response.start", "status": start.get("status", 500),
                "headers": [*headers, (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})


def _card(entry: AliasVersion, resolver: AliasResolver) -> dict:
    target = resolver.served_name(entry)
    return {"id": entry.alias, "object": "model", "created": int(entry.created_at), "owned_by": "vlmforge",
            "root": target, "parent": target, "permission": []}


# ----------------------------------------------------------------------------------------------- admin API


class SetAliasRequest(BaseModel):
    target: str = Field(description="an adapter's fine_tuned_model name, or the base model's served name")
    reason: str = Field("", max_length=500)


class RollbackRequest(BaseModel):
    to_version: int | None = Field(None, ge=1, description="default: the target before the current one")
    reason: str = Field("", max_length=500)


class AliasVersionView(BaseModel):
    version: int
    target: str  # the served model name (the base model's name for the base)
    action: str
    actor: str
    created_at: float
    reason: str
    restores: int | None = None
    scores: dict = {}


class AliasView(BaseModel):
    alias: str
    target: str
    version: int
    history: list[AliasVersionView] = []


class AliasList(BaseModel):
    aliases: list[AliasView]


def alias_router(resolver: AliasResolver, adapters: AdapterManager) -> APIRouter:
    """Mounted inside the admin router, behind its admin token."""
    store, base_name = resolver.store, resolver.base_model_name
    router = APIRouter()

    def view(entry: AliasVersion, history: list[AliasVersion] = ()) -> AliasView:
        return AliasView(alias=entry.alias, target=resolver.served_name(entry), version=entry.version,
                         history=[_version_view(v, resolver) for v in history])

    def checked_name(alias: str) -> str:
        if not is_valid_alias_name(alias):
            raise InvalidRequest(f"alias names are {ALIAS_NAME_RULE}", reason="alias_name", param="alias")
        if alias == base_name or adapters.is_stored(alias):
            raise InvalidRequest(f"`{alias}` is already a model's name; an alias needs a name of its own",
                                 reason="alias_name", param="alias")
        return alias

    async def loaded_target(target: str | None) -> None:
        """The target is loaded before the alias moves, so no request after the switch waits for a load."""
        if target is not None:
            await adapters.ensure_loaded(target, source="push")

    @router.get("/aliases")
    async def list_aliases() -> AliasList:
        return AliasList(aliases=[view(entry) for entry in resolver.all_current()])

    @router.get("/aliases/{alias}")
    async def show_alias(alias: str) -> AliasView:
        history = store.history(checked_name(alias))
        if not history:
            raise ModelNotFound(f"no alias `{alias}`", reason="alias_not_found", param="alias")
        return view(history[-1], history)

    @router.put("/aliases/{alias}")
    async def set_alias(alias: str, request: SetAliasRequest) -> AliasView:
        checked_name(alias)
        target = None if request.target == base_name else request.target
        if target is not None and not adapters.is_stored(target):
            raise ModelNotFound(f"the model `{target}` does not exist", reason="model_not_found", param="target")
        await loaded_target(target)
        return view(_write(lambda: store.set(alias, target, ADMIN_ACTOR, request.reason)))

    @router.post("/aliases/{alias}/rollback")
    async def rollback_alias(alias: str, request: RollbackRequest) -> AliasView:
        history = store.history(checked_name(alias))
        planned = _write(lambda: rollback_change(history, ADMIN_ACTOR, to_version=request.to_version))
        await loaded_target(planned.target)
        written = _write(lambda: store.rollback(alias, ADMIN_ACTOR, to_version=request.to_version,
                                                reason=request.reason))
        if written.target != planned.target:  # another change landed meanwhile: its target is loaded lazily
            await loaded_target(written.target)
        return view(written)

    return router


def _write(change):
    try:
        return change()
    except AliasNotFound as error:
        raise ModelNotFound(f"no such alias: {error}", reason="alias_not_found", param="alias") from None
    except AliasError as error:
        raise InvalidRequest(str(error), reason="alias_change", param="alias") from None
    except OSError as error:  # a read-only mount of the shared volume (EROFS), or no write permission
        raise AdminDisabled(f"this server cannot write the artifact store's .aliases directory ({error.strerror}); "
                            "aliases change here only where it is mounted read-write",
                            reason="aliases_read_only") from None


def _version_view(entry: AliasVersion, resolver: AliasResolver) -> AliasVersionView:
    return AliasVersionView(version=entry.version, target=resolver.served_name(entry), action=entry.action,
                            actor=entry.actor, created_at=entry.created_at, reason=entry.reason,
                            restores=entry.restores, scores=entry.scores)
