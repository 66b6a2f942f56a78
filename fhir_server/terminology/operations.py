"""The R4 terminology operations: CodeSystem $lookup, $validate-code and $subsumes, ValueSet $expand
and $validate-code, ConceptMap $translate. Each takes the call's inputs and, at instance level, the
resource the URL names; it returns the output resource or raises a FhirError with status and place."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from ..model.outcome import BadRequest, NotFound
from .codesystem import CodeSystemIndex
from .conceptmap import NEGATIVE, applies, translate
from .parameters import OperationInput, parameters, value
from .valueset import Entry, Verdict

if TYPE_CHECKING:
    from . import Terminology

UNCLOSED = "http://hl7.org/fhir/StructureDefinition/valueset-unclosed"


def _code_and_system(inp: OperationInput, code_name: str = "code", coding_name: str = "coding",
                     system_name: str = "system") -> tuple[str | None, str | None, dict[str, Any] | None]:
    coding = inp.coding(coding_name)
    code = inp.string(code_name) or (coding or {}).get("code")
    system = inp.string(system_name) or (coding or {}).get("system")
    return code, system, coding


async def _code_system(term: Terminology, resource: dict[str, Any] | None, system: str | None,
                       version: str | None, *, expression: str) -> CodeSystemIndex:
    if resource is not None:
        return term.definitions.compiled(resource, CodeSystemIndex)
    if not system:
        raise BadRequest(f"'{expression}' is required (or call the operation on a CodeSystem instance)",
                         expression=[expression])
    cs = await term.definitions.code_system(system, version)
    if cs is None:
        raise NotFound(f"CodeSystem {system}{' version ' + version if version else ''} is not known to this server",
                       expression=[expression])
    return cs


def _unknown_code(cs: CodeSystemIndex, code: str) -> str:
    held = "" if cs.complete else " (this server holds only a fragment of it)"
    return f"Code '{code}' is not in CodeSystem {cs.url}{held}"


# ---- CodeSystem ----

async def lookup(term: Terminology, inp: OperationInput, resource: dict[str, Any] | None = None) -> dict[str, Any]:
    code, system, _ = _code_and_system(inp)
    if not code:
        raise BadRequest("'code' (or 'coding') is required", expression=["code"])
    cs = await _code_system(term, resource, system, inp.string("version"), expression="system")
    concept = cs.get(code)
    if concept is None:
        raise NotFound(_unknown_code(cs, code), expression=["code"])
    wanted = set(inp.strings("property"))
    parts = [value("name", "String", cs.name), value("version", "String", cs.version),
             value("display", "String", concept.display or concept.code)]
    if not wanted or "abstract" in wanted:
        parts.append(value("abstract", "Boolean", concept.abstract))
    for d in concept.designations:
        sub = [value("language", "Code", d.get("language")), value("use", "Coding", d.get("use")),
               value("value", "String", d.get("value"))]
        parts.append({"name": "designation", "part": [p for p in sub if p]})
    properties = [(p["code"], {k: v for k, v in p.items() if k.startswith("value")}) for p in concept.properties
                  if p.get("code") not in ("parent", "child")]
    properties += [("parent", {"valueCode": c}) for c in concept.parents]
    properties += [("child", {"valueCode": c}) for c in concept.children]
    if concept.definition:
        properties.append(("definition", {"valueString": concept.definition}))
    for code_, val in properties:
        if not wanted or code_ in wanted:
            parts.append({"name": "property", "part": [{"name": "code", "valueCode": code_},
                                                       {"name": "value", **val}]})
    return parameters(*parts)


def _display_problem(concept_display: str | None, designations: list[dict[str, Any]],
                     given: str | None) -> str | None:
    if not given:
        return None
    known = {concept_display} | {d.get("value") for d in designations}
    known.discard(None)
    if not known or given in known:
        return None
    return f"The display '{given}' is not a display of this code; it is '{concept_display}'"


async def validate_code_cs(term: Terminology, inp: OperationInput,
                           resource: dict[str, Any] | None = None) -> dict[str, Any]:
    url = inp.string("url")
    inline = inp.resource("codeSystem")
    codings = _candidate_codings(inp)
    if resource is None and inline is None and not url:
        url = next((c.get("system") for c in codings if c.get("system")), None)
        if not url:
            raise BadRequest("'url' is required (or call the operation on a CodeSystem instance)", expression=["url"])
    if resource is not None or inline is not None:
        cs = term.definitions.compiled(resource or inline, CodeSystemIndex)
    else:
        cs = await term.definitions.code_system(url, inp.string("version"))
        if cs is None:
            return parameters(value("result", "Boolean", False),
                              value("message", "String", f"CodeSystem {url} is not known to this server"))
    messages = []
    for coding in codings:
        if coding.get("system") and coding["system"] != cs.url:
            messages.append(f"Code '{coding.get('code')}' is from {coding['system']}, not {cs.url}")
            continue
        concept = cs.get(coding.get("code", ""))
        if concept is None:
            messages.append(_unknown_code(cs, coding.get("code", "")))
            continue
        problem = _display_problem(concept.display, concept.designations, coding.get("display"))
        if problem:
            return parameters(value("result", "Boolean", False), value("message", "String", problem),
                              value("display", "String", concept.display))
        return parameters(value("result", "Boolean", True), value("display", "String", concept.display))
    return parameters(value("result", "Boolean", False), value("message", "String", "; ".join(messages)))


def _candidate_codings(inp: OperationInput) -> list[dict[str, Any]]:
    code, system, coding = _code_and_system(inp)
    display = inp.string("display")
    if code:
        out = {"code": code, "system": system} if system else {"code": code}
        if display or (coding or {}).get("display"):
            out["display"] = display or coding["display"]
        return [out]
    concept = inp.concept("codeableConcept")
    if concept and concept.get("coding"):
        return [c for c in concept["coding"] if isinstance(c, dict) and c.get("code")]
    raise BadRequest("'code', 'coding' or 'codeableConcept' is required", expression=["code"])


async def subsumes(term: Terminology, inp: OperationInput, resource: dict[str, Any] | None = None) -> dict[str, Any]:
    code_a, system_a, _ = _code_and_system(inp, "codeA", "codingA")
    code_b, system_b, _ = _code_and_system(inp, "codeB", "codingB")
    for code, name in ((code_a, "codeA"), (code_b, "codeB")):
        if not code:
            raise BadRequest(f"'{name}' (or coding{name[-1]}) is required", expression=[name])
    systems = {s for s in (system_a, system_b) if s}
    if len(systems) > 1:
        raise BadRequest(f"codingA and codingB are from different systems ({', '.join(sorted(systems))})",
                         expression=["codingB"])
    cs = await _code_system(term, resource, next(iter(systems), None), inp.string("version"), expression="system")
    found = []
    for code, name in ((code_a, "codeA"), (code_b, "codeB")):
        concept = cs.get(code)
        if concept is None:
            raise NotFound(_unknown_code(cs, code), expression=[name])
        found.append(concept.code)
    return parameters(value("outcome", "Code", cs.subsumes(*found)))


# ---- ValueSet ----

async def _value_set(term: Terminology, inp: OperationInput, resource: dict[str, Any] | None) -> dict[str, Any]:
    if resource is not None:
        return resource
    inline = inp.resource("valueSet")
    if inline is not None:
        if inline.get("resourceType") != "ValueSet":
            raise BadRequest("Parameter 'valueSet' must be a ValueSet", expression=["valueSet"])
        return inline
    url = inp.string("url")
    if not url:
        raise BadRequest("'url' or 'valueSet' is required (or call the operation on a ValueSet instance)",
                         expression=["url"])
    found = await term.definitions.find("ValueSet", url, inp.string("valueSetVersion"))
    if found is None:
        raise NotFound(f"ValueSet {url} is not known to this server", expression=["url"])
    return found


async def expand(term: Terminology, inp: OperationInput, resource: dict[str, Any] | None = None) -> dict[str, Any]:
    vs = await _value_set(term, inp, resource)
    text = (inp.string("filter") or "").strip().lower()
    offset = inp.integer("offset") or 0
    count = inp.integer("count")
    designations = inp.boolean("includeDesignations")
    active_only = inp.boolean("activeOnly")
    expansion = await term.valuesets.expand(vs)
    entries = list(expansion.entries.values())
    if active_only:
        entries = [e for e in entries if not e.inactive]
    if text:
        entries = [e for e in entries if _matches_text(e, text)]
    page = entries[offset:] if count is None else entries[offset:offset + count]
    params: list[dict[str, Any]] = []
    for name, kind, content in (("filter", "String", inp.string("filter")), ("offset", "Integer", offset),
                                ("count", "Integer", count), ("activeOnly", "Boolean", active_only)):
        if content is not None:
            params.append({"name": name, f"value{kind}": content})
    for system, version in expansion.used_systems.items():
        params.append({"name": "used-codesystem", "valueUri": f"{system}|{version}" if version else system})
    params += [{"name": "warning", "valueString": w} for w in expansion.warnings]
    out_expansion: dict[str, Any] = {}
    if expansion.unclosed:
        out_expansion["extension"] = [{"url": UNCLOSED, "valueBoolean": True}]
    out_expansion.update({"identifier": f"urn:uuid:{uuid.uuid4()}",
                          "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
                          "total": len(entries), "offset": offset})
    if params:
        out_expansion["parameter"] = params
    contains = []
    for entry in page:
        item = entry.contains()
        if not designations:
            item.pop("designation", None)
        contains.append(item)
    if contains:
        out_expansion["contains"] = contains
    result = {k: v for k, v in vs.items() if k not in ("text", "expansion", "meta")}
    result["expansion"] = out_expansion
    return result


def _matches_text(entry: Entry, text: str) -> bool:
    texts = [entry.code, entry.display or ""] + [d.get("value", "") for d in entry.designations]
    return any(text in t.lower() for t in texts)


async def validate_code_vs(term: Terminology, inp: OperationInput,
                           resource: dict[str, Any] | None = None) -> dict[str, Any]:
    vs = await _value_set(term, inp, resource)
    codings = _candidate_codings(inp)
    messages: list[str] = []
    name = vs.get("url") or f"ValueSet/{vs.get('id')}"
    for coding in codings:
        verdict: Verdict = await term.valuesets.member(vs, coding.get("system"), coding["code"])
        if verdict.member:
            cs = await term.definitions.code_system(verdict.system) if verdict.system else None
            concept = cs.get(coding["code"]) if cs is not None else None
            problem = _display_problem(verdict.display or (concept.display if concept else None),
                                       concept.designations if concept else [], coding.get("display"))
            if problem:
                return parameters(value("result", "Boolean", False), value("message", "String", problem),
                                  value("display", "String", verdict.display))
            return parameters(value("result", "Boolean", True), value("display", "String", verdict.display))
        where = f"{coding['system']}|{coding['code']}" if coding.get("system") else coding["code"]
        messages += verdict.messages or [f"Code '{where}' is not in the value set {name}"]
        if verdict.member is None:
            messages.append(f"Whether '{where}' is in the value set {name} cannot be decided")
    return parameters(value("result", "Boolean", False), value("message", "String", "; ".join(messages)))


# ---- ConceptMap ----

async def translate_op(term: Terminology, inp: OperationInput,
                       resource: dict[str, Any] | None = None) -> dict[str, Any]:
    code, system, _ = _code_and_system(inp)
    if not code:
        concept = inp.concept("codeableConcept")
        first = next(iter((concept or {}).get("coding") or []), None)
        if first is None:
            raise BadRequest("'code' (with 'system'), 'coding' or 'codeableConcept' is required", expression=["code"])
        code, system = first.get("code"), first.get("system")
    target_system = inp.string("targetsystem")
    reverse = bool(inp.boolean("reverse"))
    maps = await _concept_maps(term, inp, resource, system, target_system, reverse)
    matches = [m for cm in maps for m in translate(cm, system, code, target_system=target_system, reverse=reverse)]
    good = [m for m in matches if m.equivalence not in NEGATIVE]
    where = f"{system}|{code}" if system else code
    message = None if good else (f"No translation of '{where}' in " +
                                 (", ".join(cm.get("url", cm.get("id", "")) for cm in maps) or "any ConceptMap"))
    return parameters(value("result", "Boolean", bool(good)), value("message", "String", message),
                      *(m.part() for m in matches))


async def _concept_maps(term: Terminology, inp: OperationInput, resource: dict[str, Any] | None,
                        system: str | None, target_system: str | None, reverse: bool) -> list[dict[str, Any]]:
    if resource is not None:
        return [resource]
    inline = inp.resource("conceptMap")
    if inline is not None:
        return [inline]
    url = inp.string("url")
    if url:
        found = await term.definitions.find("ConceptMap", url, inp.string("conceptMapVersion"))
        if found is None:
            raise NotFound(f"ConceptMap {url} is not known to this server", expression=["url"])
        return [found]
    if not system:
        raise BadRequest("'system' is required when no ConceptMap is named", expression=["system"])
    params = [("target-system" if reverse else "source-system", system), ("_count", "50")]
    _, page = await term.service.search(("ConceptMap",), params, base_url="", strict=True)
    maps = [orjson.loads(m.content) for m in page.matches]
    return [cm for cm in maps if applies(cm, system, target_system, reverse)]
