"""The emr service: its contract (his.emr.v1) is defined; the implementation comes in a later issue."""
