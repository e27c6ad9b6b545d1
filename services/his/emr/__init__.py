"""The emr service: contract his.emr.v1 only; implemented in a later issue."""
