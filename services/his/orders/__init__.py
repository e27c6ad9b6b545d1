"""The orders service: laboratory orders (service requests) and prescriptions."""
