"""Health, readiness, sign-in and who am I."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from grace.api.schemas.common import Answer, Timestamp
from grace.auth import Role

__all__ = ["Credentials", "Health", "Identity", "Readiness", "SignedIn", "SignedInUser", "SignedOut"]


class Health(Answer):
    status: Literal["ok"]
    version: str


class Readiness(Answer):
    status: Literal["ready"]
    backend: str = Field(description="sqlite or postgresql")
    schema_revision: str | None = Field(alias="schema", description="The database's migration revision.")


class Credentials(BaseModel):
    """The sign-in body, as JSON or as a form."""

    username: Annotated[str, Field(min_length=1, max_length=64)]
    password: Annotated[str, Field(min_length=1, max_length=1024)]


class SignedInUser(Answer):
    id: str
    username: str
    role: Role


class SignedIn(Answer):
    user: SignedInUser
    csrf_token: str = Field(description="Send it as X-CSRF-Token on every unsafe request made with the cookie.")
    expires_at: Timestamp


class SignedOut(Answer):
    signed_out: bool


class Identity(Answer):
    user_id: str
    username: str
    role: Role
    agent: str | None = Field(description="The agent's name when the token names one; null for the person.")
    via: Literal["token", "session"]
