"""The emr service: encounters, clinical notes with amendments, diagnoses."""
