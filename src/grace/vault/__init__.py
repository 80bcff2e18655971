"""The vault: secrets the agent must ask for.

Envelope encryption (AES-256-GCM; master key -> key-encryption keys -> data
keys) with key rotation, consent with risk levels and a governance policy,
usage anomalies, and a tamper-evident audit log. :class:`Vault` is the facade.
"""

from __future__ import annotations

from grace.vault.audit import AuditEntry, AuditUnavailable, VerifyReport
from grace.vault.consent import ConsentDecision, ConsentRecord
from grace.vault.crypto import IntegrityFailure
from grace.vault.envelope import SealedData
from grace.vault.governance import Policy
from grace.vault.keyring import RotationReport
from grace.vault.masterkey import MasterKey, generate_encoded
from grace.vault.release import AccessResult
from grace.vault.risk import RiskLevel, SecretType
from grace.vault.service import Vault, stored_master_key
from grace.vault.store import SecretInfo, SecretValue
from grace.vault.upkeep import ROTATION_TASK

__all__ = [
    "ROTATION_TASK",
    "AccessResult",
    "AuditEntry",
    "AuditUnavailable",
    "ConsentDecision",
    "ConsentRecord",
    "IntegrityFailure",
    "MasterKey",
    "Policy",
    "RiskLevel",
    "RotationReport",
    "SealedData",
    "SecretInfo",
    "SecretType",
    "SecretValue",
    "Vault",
    "VerifyReport",
    "generate_encoded",
    "stored_master_key",
]
