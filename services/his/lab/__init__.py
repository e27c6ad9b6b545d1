"""The lab service: contract his.lab.v1 only; implemented in a later issue."""
