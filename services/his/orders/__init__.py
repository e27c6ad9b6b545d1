"""The orders service: its contract (his.orders.v1) is defined; the implementation comes in a later issue."""
