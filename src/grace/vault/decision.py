"""The one statement a request for a secret is decided on (``ConsentWorkflow.request``).

A request needs the secret (its seal checked), the agent's recent history with this owner's secrets
(the anomalies, ``anomaly.py``), a standing consent for exactly (agent, secret, action)
(``consent.py``) and the secret's current version, for the release that follows (``store.py``).
Each module says what it reads; this one reads it all in one statement: the secret joined to its
current version and to the standing consents still in force (a row for each, newest first, or one
row with none), the anomaly counts beside. One statement rather than four is one pass through the
driver and, on SQLite, one hand-off to a reading thread, on the path of every consented read.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import Connection, Select, and_, bindparam, select

from grace.vault import anomaly, consent, store
from grace.vault.consent import ConsentRecord, ConsentStore
from grace.vault.store import SecretInfo, SecretStore
from grace.vault.tables import secret_consent_records, vault_secret_versions, vault_secrets

__all__ = ["Read", "read"]

_VERSION = "version__"
_CONSENT = "consent__"


class Read(NamedTuple):
    """What a request's read found: the secret, its anomalies, a standing consent and the current version's row."""

    secret: SecretInfo | None
    found: list[str]
    standing: ConsentRecord | None = None
    version: Mapping[Any, Any] | None = None


@functools.cache
def _statement(policy: anomaly.AnomalyPolicy, *, of_nobody: bool) -> Select[Any]:
    """Built once per anomaly policy and kind of requester; its values bound at each request."""
    secrets, versions, consents = vault_secrets, vault_secret_versions, secret_consent_records
    named = (secrets.c.owner_id == bindparam("owner_id"), secrets.c.key == bindparam("key"))
    # The anomaly counts name the secret by the same lookup, uncorrelated: evaluated once, by its unique index.
    secret_id = select(secrets.c.id).where(*named).correlate(None).scalar_subquery()
    joined = secrets.outerjoin(
        versions, and_(versions.c.secret_id == secrets.c.id, versions.c.version == secrets.c.current_version)
    ).outerjoin(consents, and_(*consent.standing_conditions(secrets.c.id, of_nobody=of_nobody)))
    return (
        select(
            secrets,
            *store.version_columns(_VERSION),
            *anomaly.columns(policy, secret_id),
            *consent.standing_columns(_CONSENT),
        )
        .select_from(joined)
        .where(*named)
        .order_by(consents.c.created_at.desc())
    )


def read(
    conn: Connection,
    *,
    secrets: SecretStore,
    consents: ConsentStore,
    policy: anomaly.AnomalyPolicy,
    owner_id: str,
    key: str,
    agent: str,
    action: str,
    requester_user_id: str | None,
    now: datetime,
) -> Read:
    """Read all a request decides on inside the caller's (synchronous) transaction.

    Seals are required (RowTampered, not yet reported: the caller wraps its read in
    ``seal.reporting()``). A secret that is not active is returned alone; anomalies rule a standing
    consent out; the version is returned only beside a standing consent (the release it allows).
    """
    values = anomaly.parameters(policy, owner_id=owner_id, agent=agent, action=action, now=now)
    values.update(key=key, now=now)
    if requester_user_id is not None:
        values["requester_user_id"] = requester_user_id
    rows = conn.execute(_statement(policy, of_nobody=requester_user_id is None), values).mappings().all()
    if not rows:
        return Read(None, [])
    first = rows[0]
    secret = secrets.sealed(first)
    if secret.status != "active":
        return Read(secret, [])
    found = anomaly.judge(policy, first)
    if found:
        return Read(secret, found)
    candidates = [row for row in rows if row[_CONSENT + "consent_id"] is not None]
    standing = consents.first_standing(candidates, now, _CONSENT)
    if standing is None:
        return Read(secret, [])
    return Read(secret, [], standing, store.version_of(first, _VERSION))
