"""The iam service: contract his.iam.v1 only; implemented in a later issue."""
