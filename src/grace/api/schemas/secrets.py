"""The vault: secrets (masked, never a value but in the one authorised retrieval), consents, audit, keys."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from grace.api.schemas.common import Answer, Timestamp

__all__ = [
    "AccessAnswer",
    "AuditEntries",
    "AuditEntryOut",
    "AuditExport",
    "AuditExportAnswer",
    "AuditVerifyAnswer",
    "ConsentAnswer",
    "ConsentList",
    "ConsentOut",
    "ConsentStats",
    "ConsentStatsAnswer",
    "KeyOut",
    "KeysAnswer",
    "KeysStatus",
    "PendingConsents",
    "RotationDue",
    "RotationStarted",
    "SecretAnswer",
    "SecretDetail",
    "SecretList",
    "SecretOut",
    "SecretVersion",
    "SignedHead",
    "VerifyReport",
]


class SecretOut(Answer):
    """A secret's description, masked: at most the value's last four characters."""

    id: str
    owner_id: str
    secret_key: str
    secret_type: str
    service: str
    risk_level: str
    description: str
    status: str
    version: int
    masked_value: str
    usage_count: int
    last_used_at: Timestamp | None
    rotation_days: int | None
    rotation_due_at: Timestamp | None
    created_at: Timestamp
    updated_at: Timestamp
    revoked_at: Timestamp | None


class SecretAnswer(Answer):
    secret: SecretOut


class SecretList(Answer):
    secrets: list[SecretOut]


class RotationDue(Answer):
    due: list[SecretOut]


class SecretVersion(Answer):
    version: int
    key_id: str
    created_at: Timestamp
    created_by: str


class SecretDetail(Answer):
    secret: SecretOut
    versions: list[SecretVersion]


class AccessAnswer(Answer):
    """What asking for a secret gave: the value only with 200 (approved); 202 pending with a consent to poll."""

    status: str = Field(description="approved, pending, denied, expired, revoked, ...")
    approved: bool
    consent_id: str | None
    reason: str
    version: int | None
    anomalies: list[str]
    secret_key: str
    secret_value: str | None = Field(default=None, description="The value: only in a 200 answer.")
    poll: str | None = Field(default=None, description="How to collect the value: only in a 202 answer.")


class ConsentOut(Answer):
    consent_id: str
    kind: Literal["secret", "approval"] = Field(
        default="secret",
        description="secret: a use of a secret; approval: a playbook step asking its owner (tied to no secret).",
    )
    secret_key: str
    secret_type: str
    service: str
    requested_by: str
    requested_for: str
    requested_action: str
    user_id: str
    consent_status: str
    risk_level: str
    single_use: bool
    used_count: int
    governance_approval_required: bool
    governance_decision: str | None
    second_approval_required: bool
    awaiting_second_approval: bool
    approved_by: str | None
    second_approved_by: str | None
    denial_reason: str | None
    auto_approved: bool
    anomalies: list[str]
    context: dict[str, Any]
    created_at: Timestamp
    expires_at: Timestamp
    responded_at: Timestamp | None
    valid_until: Timestamp | None
    idle_timeout_seconds: int | None
    last_used_at: Timestamp | None
    revoked_at: Timestamp | None
    expires_in_seconds: int | None = Field(default=None, description="Only while pending.")


class ConsentAnswer(Answer):
    consent: ConsentOut


class ConsentList(Answer):
    consents: list[ConsentOut]


class PendingConsents(Answer):
    pending: list[ConsentOut]


class ConsentStats(Answer):
    total: int
    by_status: dict[str, int]
    by_risk: dict[str, int]
    approval_rate: float | None
    auto_approved: int
    with_anomalies: int
    pending: int
    average_response_seconds: float | None


class ConsentStatsAnswer(Answer):
    stats: ConsentStats


class AuditEntryOut(Answer):
    seq: int
    at: Timestamp
    event: str
    actor: str
    user_id: str | None
    secret_id: str | None
    consent_id: str | None
    outcome: str
    details: dict[str, Any]
    hash: str


class AuditEntries(Answer):
    entries: list[AuditEntryOut]


class VerifyReport(Answer):
    """What checking the audit chain and the sealed rows found; ``ok`` only when every list is empty."""

    ok: bool
    entries: int
    checkpoints: int
    modified: list[int]
    deleted: list[int]
    inserted: list[int]
    reordered: list[int]
    truncated: list[int]
    forked: list[int] = Field(
        description="Where a head signed outside the database (the anchor) names another entry: cut and grown again."
    )
    bad_checkpoints: list[int]
    anchor: str | None = Field(description="What is wrong with the anchor file itself (missing, garbled, forged).")
    against: int = Field(description="Exported checkpoints the log was checked against (the CLI's --against).")
    tampered_rows: list[dict[str, str]] = Field(
        description='Sealed rows whose seal does not match, each {table, id} (docs/vault.md, "Sealed rows").'
    )


class AuditVerifyAnswer(Answer):
    report: VerifyReport


class SignedHead(Answer):
    """A signed head of the audit chain: the entry at ``seq`` has the hash ``head_hash`` (Ed25519)."""

    seq: int
    head_hash: str
    at: Timestamp
    signature: str
    public_key: str


class AuditExport(Answer):
    """Every signed checkpoint of the audit log, to keep elsewhere (`grace audit verify --against FILE`)."""

    format: str = Field(description="grace-audit-checkpoints/1")
    exported_at: Timestamp
    public_key: str = Field(description="The vault's checkpoint-signing public key (Ed25519, hex).")
    checkpoints: list[SignedHead]


class AuditExportAnswer(Answer):
    export: AuditExport


class KeyOut(Answer):
    """A key-encryption key's description (never its bytes)."""

    id: str
    term: int
    status: str
    created_at: Timestamp
    activated_at: Timestamp | None
    expires_at: Timestamp | None
    archived_at: Timestamp | None
    data_keys: int | None = Field(default=None, description="How many secret versions it wraps.")


class KeysStatus(Answer):
    master_key_source: str
    master_key_id: str
    active_key: KeyOut | None
    active_keys: int
    expires_at: Timestamp | None
    expiring_soon: bool
    expired: bool
    next_scheduled_rotation: Timestamp
    rotation_in_progress: str | None
    keys: list[KeyOut]


class KeysAnswer(Answer):
    keys: KeysStatus


class RotationStarted(Answer):
    queued: bool = Field(description="True when the rotation was queued as a task (task_id).")
    task_id: str | None = None
    started: bool | None = Field(default=None, description="When not queued: whether it started in this process.")
    keys: KeysStatus
