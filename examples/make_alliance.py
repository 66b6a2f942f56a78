"""Writes examples/alliance.json: an example county alliance as a transaction Bundle of PUTs (stable ids,
so loading it twice changes nothing but versions). Load it with `fhir-server load examples/alliance.json`
or POST it to the server's base URL.

County hospital (with its ECG centre and central pharmacy) -> two township health centres -> two village
clinics each; a Location for each; county experts with their specialties, each paired with a township
centre (the expert database); one doctor per village ("one village, one doctor"); township GPs; the
experts' Schedules and free Slots; residents with a resident ID number and a health card."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fhir_server.identifiers import HEALTH_CARD, RESIDENT_ID  # noqa: E402
from fhir_server.workflow.codes import (  # noqa: E402
    ALLIANCE_ROLE,
    ALLIANCE_ROLES,
    ORGANIZATION_LEVEL,
    ORGANIZATION_LEVELS,
)

SNOMED = "http://snomed.info/sct"
SPECIALTIES = {"cardiology": ("394579002", "Cardiology"), "radiology": ("394914008", "Radiology"),
               "endocrinology": ("394583002", "Endocrinology"), "general": ("394814009", "General practice")}
ORGANIZATIONS = [  # id, name, level, part of
    ("county-hospital", "Anle County People's Hospital", "county-hospital", None),
    ("township-dongguan", "Dongguan Township Health Centre", "township-health-centre", "county-hospital"),
    ("township-xihe", "Xihe Township Health Centre", "township-health-centre", "county-hospital"),
    ("village-taoyuan", "Taoyuan Village Clinic", "village-clinic", "township-dongguan"),
    ("village-shangping", "Shangping Village Clinic", "village-clinic", "township-dongguan"),
    ("village-hexi", "Hexi Village Clinic", "village-clinic", "township-xihe"),
    ("village-nanshan", "Nanshan Village Clinic", "village-clinic", "township-xihe"),
]
DEPARTMENTS = [("county-ecg-centre", "County ECG Centre"), ("county-pharmacy", "County Central Pharmacy")]
EXPERTS = [  # practitioner id, family, given, gender, specialty, paired township centre
    ("zhang-wei", "张", "伟", "male", "cardiology", "township-dongguan"),
    ("li-na", "李", "娜", "female", "radiology", "township-xihe"),
    ("chen-jing", "陈", "静", "female", "endocrinology", "township-dongguan"),
]
TOWNSHIP_GPS = [
    ("wang-qiang", "王", "强", "male", "township-dongguan"),
    ("zhao-min", "赵", "敏", "female", "township-xihe"),
]
VILLAGE_DOCTORS = [  # one village, one doctor
    ("liu-yang", "刘", "洋", "male", "village-taoyuan"),
    ("sun-li", "孙", "丽", "female", "village-shangping"),
    ("zhou-jun", "周", "军", "male", "village-hexi"),
    ("wu-fang", "吴", "芳", "female", "village-nanshan"),
]
RESIDENTS = [  # id, family, given, gender, birth date, resident ID, health card, phone, village
    ("resident-1", "王", "秀英", "female", "1956-03-12", "530102195603120027", "HC5301020001", "13800000001",
     "village-taoyuan"),
    ("resident-2", "李", "建国", "male", "1949-10-01", "530102194910010013", "HC5301020002", "13800000002",
     "village-shangping"),
    ("resident-3", "张", "桂兰", "female", "1962-07-21", "530102196207210048", "HC5301020003", "13800000003",
     "village-hexi"),
    ("resident-4", "刘", "德华", "male", "1971-09-27", "530102197109270031", "HC5301020004", "13800000004",
     "village-nanshan"),
]
SLOT_DAYS = ["2026-06-01", "2026-06-02"]
SLOT_HOURS = ["09:00", "10:00", "14:00"]


def concept(system: str, code: str, display: str) -> dict:
    return {"coding": [{"system": system, "code": code, "display": display}], "text": display}


def specialty(name: str) -> list[dict]:
    return [concept(SNOMED, *SPECIALTIES[name])]


def role(code: str) -> list[dict]:
    return [concept(ALLIANCE_ROLE, code, ALLIANCE_ROLES[code])]


def practitioner_role(role_id: str, pid: str, organization: str, code: str, field: str) -> dict:
    """The practitioner's role at an organization, at its main site."""
    return {"resourceType": "PractitionerRole", "id": role_id, "active": True,
            "practitioner": {"reference": f"Practitioner/{pid}"},
            "organization": {"reference": f"Organization/{organization}"},
            "location": [{"reference": f"Location/{organization}-site"}],
            "code": role(code), "specialty": specialty(field)}


def practitioner(pid: str, family: str, given: str, gender: str) -> dict:
    return {"resourceType": "Practitioner", "id": pid, "active": True, "gender": gender,
            "name": [{"family": family, "given": [given], "text": family + given}]}


def resources() -> list[dict]:
    out = []
    for oid, name, level, parent in ORGANIZATIONS:
        organization = {"resourceType": "Organization", "id": oid, "active": True, "name": name,
                        "type": [concept(ORGANIZATION_LEVEL, level, ORGANIZATION_LEVELS[level])]}
        if parent:
            organization["partOf"] = {"reference": f"Organization/{parent}"}
        out.append(organization)
        out.append({"resourceType": "Location", "id": f"{oid}-site", "status": "active", "name": name,
                    "mode": "instance", "managingOrganization": {"reference": f"Organization/{oid}"}})
    for oid, name in DEPARTMENTS:
        out.append({"resourceType": "Organization", "id": oid, "active": True, "name": name,
                    "type": [concept("http://terminology.hl7.org/CodeSystem/organization-type", "dept",
                                     "Hospital Department")],
                    "partOf": {"reference": "Organization/county-hospital"}})
    for oid, name, level, _ in ORGANIZATIONS:  # the central pharmacy hands out at township and village sites
        if level != "county-hospital":
            out.append({"resourceType": "Location", "id": f"{oid}-pharmacy", "status": "active",
                        "name": f"{name} dispensary", "mode": "instance",
                        "type": [concept("http://terminology.hl7.org/CodeSystem/v3-RoleCode", "PHARM", "Pharmacy")],
                        "managingOrganization": {"reference": f"Organization/{oid}"},
                        "partOf": {"reference": f"Location/{oid}-site"}})
    for pid, family, given, gender, field, township in EXPERTS:
        out.append(practitioner(pid, family, given, gender))
        out.append(practitioner_role(f"{pid}-county", pid, "county-hospital", "county-expert", field))
        out.append(practitioner_role(f"{pid}-paired", pid, township, "paired-expert", field))
        out.append({"resourceType": "Schedule", "id": f"{pid}-schedule", "active": True,
                    "serviceType": specialty(field), "specialty": specialty(field),
                    "actor": [{"reference": f"PractitionerRole/{pid}-county"}, {"reference": f"Practitioner/{pid}"}]})
        for day in SLOT_DAYS:
            for hour in SLOT_HOURS:
                end = f"{int(hour[:2]) + 1:02d}:00"
                out.append({"resourceType": "Slot", "id": f"{pid}-{day}-{hour[:2]}",
                            "schedule": {"reference": f"Schedule/{pid}-schedule"}, "status": "free",
                            "specialty": specialty(field),
                            "start": f"{day}T{hour}:00+08:00", "end": f"{day}T{end}:00+08:00"})
    for pid, family, given, gender, township in TOWNSHIP_GPS:
        out.append(practitioner(pid, family, given, gender))
        out.append(practitioner_role(f"{pid}-gp", pid, township, "general-practitioner", "general"))
    for pid, family, given, gender, village in VILLAGE_DOCTORS:
        out.append(practitioner(pid, family, given, gender))
        out.append(practitioner_role(f"{pid}-village", pid, village, "village-doctor", "general"))
    doctors = {village: pid for pid, _, _, _, village in VILLAGE_DOCTORS}
    for rid, family, given, gender, born, resident_id, card, phone, village in RESIDENTS:
        out.append({"resourceType": "Patient", "id": rid, "active": True,
                    "identifier": [{"use": "official", "system": RESIDENT_ID, "value": resident_id},
                                   {"use": "secondary", "system": HEALTH_CARD, "value": card}],
                    "name": [{"use": "official", "family": family, "given": [given], "text": family + given}],
                    "gender": gender, "birthDate": born, "telecom": [{"system": "phone", "value": phone}],
                    "managingOrganization": {"reference": f"Organization/{village}"},
                    "generalPractitioner": [{"reference": f"PractitionerRole/{doctors[village]}-village"}]})
    return out


def bundle() -> dict:
    return {"resourceType": "Bundle", "type": "transaction",
            "entry": [{"fullUrl": f"{r['resourceType']}/{r['id']}", "resource": r,
                       "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}} for r in resources()]}


if __name__ == "__main__":
    target = Path(__file__).resolve().parent / "alliance.json"
    target.write_text(json.dumps(bundle(), ensure_ascii=False, indent=1) + "\n")
    print(f"wrote {target} ({len(bundle()['entry'])} resources)")
