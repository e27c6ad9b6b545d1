"""Settings of the audit service (`HIS_AUDIT_*`): the checkpoint key, log and interval."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from his.base.env import ConfigError, number

# How often the service seals the chain with a signed checkpoint when it moved, and follows the
# other replicas' checkpoints: the bounds of the anchoring guarantee (README "Security").
DEFAULT_CHECKPOINT_INTERVAL_S = 60.0


@dataclass(frozen=True)
class AuditConfig:
    """Where the checkpoint key and the checkpoint log are, and how often to checkpoint."""

    # The Ed25519 private key (PEM, PKCS#8) that signs checkpoints. Required in the mesh (a
    # Secret mounted as a file); locally made once into `<data_dir>/secrets/` when unset.
    key_file: Path
    # True when the key was configured (so it must exist: a missing file is a start-up error,
    # never a silently generated new key).
    key_configured: bool
    # Every checkpoint is also appended here, outside the database ("" turns the copy off).
    log_file: Path | None
    interval_s: float = DEFAULT_CHECKPOINT_INTERVAL_S

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> AuditConfig:
        """Read HIS_AUDIT_CHECKPOINT_KEY_FILE, HIS_AUDIT_CHECKPOINT_LOG and
        HIS_AUDIT_CHECKPOINT_INTERVAL_S (HIS_DATA_DIR for the local defaults)."""
        data_dir = Path(env.get("HIS_DATA_DIR") or ".his")
        configured = env.get("HIS_AUDIT_CHECKPOINT_KEY_FILE") or ""
        if not configured and env.get("HIS_MESH") == "istio":
            raise ConfigError(
                "HIS_AUDIT_CHECKPOINT_KEY_FILE is required with HIS_MESH=istio (the Ed25519 key"
                " that signs audit checkpoints, mounted from the audit-checkpoint-key Secret)"
            )
        log = env.get("HIS_AUDIT_CHECKPOINT_LOG")
        interval = number(env, "HIS_AUDIT_CHECKPOINT_INTERVAL_S", DEFAULT_CHECKPOINT_INTERVAL_S)
        if interval <= 0:
            raise ConfigError("HIS_AUDIT_CHECKPOINT_INTERVAL_S must be positive")
        return cls(
            key_file=Path(configured)
            if configured
            else data_dir / "secrets" / "audit-checkpoint-key.pem",
            key_configured=bool(configured),
            log_file=(
                data_dir / "audit" / "checkpoints.jsonl"
                if log is None
                else (Path(log) if log else None)
            ),
            interval_s=interval,
        )
