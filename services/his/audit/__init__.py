"""The audit service: the append-only, hash-chained audit trail (his.audit.v1.AuditService)."""
