"""Users and API tokens."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter
from pydantic import BaseModel, Field

from grace.api import contract, policy, userrefs
from grace.api.deps import CurrentPrincipal, ServicesDep
from grace.api.schemas.users import CreatedToken, CreatedUser, TokenAnswer, TokenList, UserAnswer, UserList
from grace.auth import Role

router = APIRouter(prefix="/api", tags=["users"])


class NewUser(BaseModel):
    username: Annotated[str, Field(min_length=2, max_length=64)]
    role: Role = Role.MEMBER
    password: Annotated[str | None, Field(min_length=12, max_length=1024)] = None


class NewToken(BaseModel):
    name: Annotated[str, Field(max_length=128)] = ""
    agent: Annotated[str | None, Field(min_length=1, max_length=64)] = None
    expires_in_days: Annotated[int | None, Field(ge=1, le=3650)] = None
    user_id: Annotated[str | None, Field(min_length=1, max_length=64, description=userrefs.DESCRIBED)] = None
    scopes: Annotated[
        list[Annotated[str, Field(max_length=32)]] | None,
        Field(
            max_length=20,
            description="What it may do (default: all its creator may give it; agents: tasks, secrets:ask).",
        ),
    ] = None
    origins: Annotated[
        list[Annotated[str, Field(max_length=40)]] | None,
        Field(max_length=20, description="The task origins it may claim (default: its user's role's)."),
    ] = None
    max_priority: Annotated[
        str | None, Field(max_length=16, description="The most urgent task priority it may use.")
    ] = None


@router.get("/users", dependencies=[policy.USERS], response_model=UserList)
async def list_users(services: ServicesDep) -> dict[str, object]:
    """List every user (admin only)."""
    return {"users": [u.as_dict() for u in await services.accounts.list_users()]}


@router.post(
    "/users",
    status_code=201,
    dependencies=[policy.USERS],
    response_model=CreatedUser,
    response_model_exclude_unset=True,
    responses=contract.errors(**{"409": "A user of that name exists."}),
)
async def create_user(body: NewUser, services: ServicesDep) -> dict[str, object]:
    """Create a user (admin only); a generated password is returned once."""
    user, password = await services.accounts.create_user(body.username, body.role, body.password)
    out: dict[str, object] = {"user": user.as_dict()}
    if body.password is None:
        out["password"] = password
    return out


@router.post("/users/{username}/disable", dependencies=[policy.USERS], response_model=UserAnswer)
async def disable_user(username: str, services: ServicesDep) -> dict[str, object]:
    """Disable a user (admin only); their tokens and sessions stop working at once."""
    return {"user": (await services.accounts.set_disabled(username, True)).as_dict()}


@router.get("/tokens", dependencies=[policy.TOKENS], response_model=TokenList)
async def list_tokens(principal: CurrentPrincipal, services: ServicesDep) -> dict[str, object]:
    """List your API tokens (admins see everyone's); never the token values."""
    user_id = None if principal.is_admin else principal.user_id
    return {"tokens": [t.as_dict() for t in await services.accounts.list_tokens(user_id)]}


@router.post("/tokens", status_code=201, dependencies=[policy.TOKENS], response_model=CreatedToken)
async def create_token(body: NewToken, principal: CurrentPrincipal, services: ServicesDep) -> dict[str, object]:
    """Issue an API token, optionally naming the agent that will use it and narrowing its scopes; shown once.

    Never from an agent's token, and never with more than the caller's own credentials hold."""
    expires = timedelta(days=body.expires_in_days) if body.expires_in_days else None
    info, plaintext = await services.accounts.create_token(
        await userrefs.user_id_for(services, principal, body.user_id) or principal.user_id,
        name=body.name,
        agent=body.agent,
        expires_in=expires,
        scopes=body.scopes,
        origins=body.origins,
        max_priority=body.max_priority,
        by=principal,
    )
    return {"token": plaintext, "info": info.as_dict()}


@router.post("/tokens/{token_id}/revoke", dependencies=[policy.TOKENS], response_model=TokenAnswer)
async def revoke_token(token_id: str, principal: CurrentPrincipal, services: ServicesDep) -> dict[str, object]:
    """Revoke an API token (yours, or anyone's for an admin) and every token it issued."""
    return {"token": (await services.accounts.revoke_token(token_id, by=principal)).as_dict()}
