"""Principals: users with roles, API tokens for agents, browser sessions, and the scopes tokens carry."""

from __future__ import annotations

from grace.auth.accounts import Accounts, BootstrapCredentials, TokenInfo, User
from grace.auth.principals import Principal, Role
from grace.auth.scopes import AGENT_SCOPES, Scope, TaskLimits
from grace.auth.sessions import SessionGrant, SignIn
from grace.auth.tables import SEALED
from grace.auth.tokencache import TokenCache

__all__ = [
    "AGENT_SCOPES",
    "SEALED",
    "Accounts",
    "BootstrapCredentials",
    "Principal",
    "Role",
    "Scope",
    "SessionGrant",
    "SignIn",
    "TaskLimits",
    "TokenCache",
    "TokenInfo",
    "User",
]
