"""The orders service: contract his.orders.v1 only; implemented in a later issue."""
