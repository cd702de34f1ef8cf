"""/admin/v1/adapters: load (the trainer pushes each fine-tune here), list and unload adapters; /admin/v1/aliases:
set, show (with history) and roll back model aliases (aliases.py). Guarded by an
admin token that is not the user API key; with no token configured these endpoints answer 403."""

from __future__ import annotations

import hashlib
import secrets

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel

from .adapters import AdapterManager
from .aliases import AliasResolver, alias_router
from .errors import AdminDisabled, Unauthorized


class LoadAdapterRequest(BaseModel):
    name: str


class AdapterState(BaseModel):
    name: str
    loaded: bool
    newly_loaded: bool = False


class AdapterList(BaseModel):
    adapters: list[str]


def admin_router(adapters: AdapterManager, admin_token: str | None,
                 aliases: AliasResolver | None = None) -> APIRouter:
    token_digest = hashlib.sha256(admin_token.encode()).digest() if admin_token else None

    def require_admin(request: Request) -> None:
        if token_digest is None:
            raise AdminDisabled("admin endpoints are disabled: no admin token is configured",
                                reason="admin_disabled")
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(hashlib.sha256(token.encode()).digest(),
                                                                    token_digest):
            raise Unauthorized("a valid admin token is required (Authorization: Bearer <token>)",
                               reason="unauthorized")

    router = APIRouter(prefix="/admin/v1", dependencies=[Depends(require_admin)])

    @router.post("/adapters")
    async def load_adapter(request: LoadAdapterRequest) -> AdapterState:
        newly_loaded = await adapters.ensure_loaded(request.name, source="push")
        return AdapterState(name=request.name, loaded=True, newly_loaded=newly_loaded)

    @router.get("/adapters")
    async def list_adapters() -> AdapterList:
        return AdapterList(adapters=sorted(adapters.loaded()))

    @router.delete("/adapters/{name}")
    async def unload_adapter(name: str) -> AdapterState:
        await adapters.unload(name)
        return AdapterState(name=name, loaded=False)

    if aliases is not None:
        router.include_router(alias_router(aliases, adapters))
    return router
