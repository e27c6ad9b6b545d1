"""The iam service: its contract (his.iam.v1) is defined; the implementation comes in a later issue."""
