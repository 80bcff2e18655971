"""Principals: users with roles, API tokens for agents, and browser sessions."""

from __future__ import annotations

from grace.auth.accounts import Accounts, BootstrapCredentials, TokenInfo, User
from grace.auth.principals import Principal, Role
from grace.auth.sessions import SessionGrant, SignIn

__all__ = ["Accounts", "BootstrapCredentials", "Principal", "Role", "SessionGrant", "SignIn", "TokenInfo", "User"]
