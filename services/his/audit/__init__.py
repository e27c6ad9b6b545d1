"""The audit service: its contract (his.audit.v1) is defined; the implementation comes in a later issue."""
