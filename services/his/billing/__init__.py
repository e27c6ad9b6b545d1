"""The billing service: contract his.billing.v1 only; implemented in a later issue."""
