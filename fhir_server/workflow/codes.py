"""Code systems of the alliance's own workflows (published as CodeSystems under terminology/)."""

from __future__ import annotations

# ServiceRequest.category of a referral between member institutions
REFERRAL_CATEGORY = "urn:alliance:referral-category"
REFERRAL_CATEGORIES = {"referral": "Referral", "teleconsultation": "Teleconsultation",
                       "imaging-read": "Imaging read"}
# Organization.type: where an institution stands in the alliance
ORGANIZATION_LEVEL = "urn:alliance:organization-level"
ORGANIZATION_LEVELS = {"county-hospital": "County hospital", "township-health-centre": "Township health centre",
                       "village-clinic": "Village clinic"}
# PractitionerRole.code of the alliance's own roles
ALLIANCE_ROLE = "urn:alliance:practitioner-role"
ALLIANCE_ROLES = {"county-expert": "County expert", "paired-expert": "Expert paired with a township centre",
                  "village-doctor": "Village doctor (one village, one doctor)",
                  "general-practitioner": "General practitioner"}
