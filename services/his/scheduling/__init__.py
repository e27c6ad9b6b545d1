"""The scheduling service: its contract (his.scheduling.v1) is defined; the implementation comes in a later issue."""
