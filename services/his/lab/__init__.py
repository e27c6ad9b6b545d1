"""The lab service: its contract (his.lab.v1) is defined; the implementation comes in a later issue."""
