"""SMART on FHIR authorization: the OAuth 2 authorization server, access-token verification and the
scope enforcement that every interaction, search, operation and bundle entry passes through."""
