"""DICOM bridge: SCP, DICOM -> FHIR mapping, DICOMweb."""
