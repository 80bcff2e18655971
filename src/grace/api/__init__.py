"""The HTTP edge: thin routes over the capabilities.

Besides the app, it exports what the web UI (``grace.web``, the other HTTP edge) shares with it: the
route policies, the caller's principal and services, the session and CSRF names, the client's
address for the sign-in limit, and how a router's routes join the app (``add_routes``).
"""

from __future__ import annotations

from grace.api.app import create_app, served_app
from grace.api.deps import CSRF_FIELD, CSRF_HEADER, SESSION_COOKIE, CurrentPrincipal, ServicesDep
from grace.api.errors import status_for
from grace.api.flat import add_routes
from grace.api.forwarded import client_address
from grace.api.policy import (
    AUDIT,
    CONSENTS,
    PLAYBOOKS,
    PLAYBOOKS_RUN,
    PUBLIC,
    SECRETS,
    SIGNED_IN,
    TASKS,
    VOICE,
    Policy,
    Public,
    policy_of,
)

__all__ = [
    "AUDIT",
    "CONSENTS",
    "CSRF_FIELD",
    "CSRF_HEADER",
    "PLAYBOOKS",
    "PLAYBOOKS_RUN",
    "PUBLIC",
    "SECRETS",
    "SESSION_COOKIE",
    "SIGNED_IN",
    "TASKS",
    "VOICE",
    "CurrentPrincipal",
    "Policy",
    "Public",
    "ServicesDep",
    "add_routes",
    "client_address",
    "create_app",
    "policy_of",
    "served_app",
    "status_for",
]
