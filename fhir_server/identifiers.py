"""Identifier systems of the alliance's residents, shared by the workflows and the terminology."""

from __future__ import annotations

# Resident identity card number (居民身份证号码): one per resident, the key of "one resident, one record".
RESIDENT_ID = "urn:oid:2.16.156.10011.1.1"
# Resident health card number (居民健康卡号).
HEALTH_CARD = "urn:oid:2.16.156.10011.1.19"
