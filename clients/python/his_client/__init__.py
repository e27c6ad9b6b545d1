"""The HIS Mesh Python client SDK: channels and typed stubs for every service.

Resilience (derived deadlines, idempotent-only retries, circuit breakers) is built on these
channels; see `channels.py`.
"""

from his_client.channels import ServiceAddresses, open_channel
from his_client.patient import PatientClient

__all__ = ["PatientClient", "ServiceAddresses", "open_channel"]
