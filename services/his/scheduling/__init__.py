"""The scheduling service: contract his.scheduling.v1 only; implemented in a later issue."""
