"""The billing service: its contract (his.billing.v1) is defined; the implementation comes in a later issue."""
