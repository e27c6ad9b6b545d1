"""The HIS Mesh Python client SDK: typed async stubs for every service, with deadlines derived
from the call being served, retries only where the proto says a method is safe to repeat, and one
circuit breaker per upstream."""

from his_client.clients import HisClients
from his_client.credentials import static_token
from his_client.errors import RichStatus, UpstreamError, describe, rich_status
from his_client.patient import PatientClient
from his_client.patient_sign_in import PatientSignedIn, local_code, patient_sign_in

__all__ = [
    "HisClients",
    "PatientClient",
    "PatientSignedIn",
    "RichStatus",
    "UpstreamError",
    "describe",
    "local_code",
    "patient_sign_in",
    "rich_status",
    "static_token",
]
