"""The audit service: contract his.audit.v1 only; implemented in a later issue."""
