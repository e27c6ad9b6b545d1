"""The patient service: master patient index and consents (his.patient.v1.PatientService)."""
