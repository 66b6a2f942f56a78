"""SQL on FHIR v2 views: ViewDefinition evaluation and its CSV, NDJSON and Parquet output."""
