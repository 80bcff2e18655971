"""Users and API tokens."""

from __future__ import annotations

from pydantic import Field

from grace.api.schemas.common import Answer, Timestamp
from grace.auth import Role

__all__ = ["CreatedToken", "CreatedUser", "TokenAnswer", "TokenList", "TokenOut", "UserAnswer", "UserList", "UserOut"]


class UserOut(Answer):
    id: str
    username: str
    role: Role
    disabled: bool
    created_at: Timestamp


class UserList(Answer):
    users: list[UserOut]


class UserAnswer(Answer):
    user: UserOut


class CreatedUser(Answer):
    user: UserOut
    password: str | None = Field(
        default=None, description="The generated password, shown once (only when none was given)."
    )


class TokenOut(Answer):
    """A token's public description: never the token itself."""

    id: str
    user_id: str
    name: str
    agent: str | None = Field(description="The agent that uses it; null for the user's own token.")
    prefix: str = Field(description="The token's first characters, to recognise it by.")
    scopes: list[str]
    origins: list[str] | None = Field(description="The task origins it may claim; null: its user's role's.")
    max_priority: str | None = Field(description="The most urgent priority it may use; null: its user's role's.")
    parent_id: str | None = Field(description="The token that issued it.")
    created_at: Timestamp
    last_used_at: Timestamp | None
    expires_at: Timestamp | None
    revoked_at: Timestamp | None


class TokenList(Answer):
    tokens: list[TokenOut]


class CreatedToken(Answer):
    token: str = Field(description="The token, shown this once: send it as 'Authorization: Bearer <token>'.")
    info: TokenOut


class TokenAnswer(Answer):
    token: TokenOut
