"""The pharmacy service: its contract (his.pharmacy.v1) is defined; the implementation comes in a later issue."""
