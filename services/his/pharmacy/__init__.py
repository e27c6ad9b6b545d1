"""The pharmacy service: contract his.pharmacy.v1 only; implemented in a later issue."""
