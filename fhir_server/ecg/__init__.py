"""ECG waveforms (FHIR SampledData, WFDB, DICOM), signal processing and triage."""
