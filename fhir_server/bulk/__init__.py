"""Bulk Data: asynchronous $export and $import jobs (FHIR Bulk Data Access IG 2.0)."""
