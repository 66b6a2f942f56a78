"""Checking a resource against a constraint StructureDefinition's differential: cardinality (min/max),
fixed[x] and pattern[x] values, choice types, slicing by value/pattern discriminators, required (and
extensible) bindings against the server's ValueSets, and FHIRPath invariants. Every problem becomes an
issue whose expression is the FHIRPath of the element instance (Observation.component[1].code)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from fhirpathpy import evaluate as fhirpath

from ..model.outcome import Issue
from .valueset import ExpansionError

if TYPE_CHECKING:
    from . import Terminology


@dataclass
class Node:
    value: Any
    expression: str


def _upper_first(text: str) -> str:
    return text[:1].upper() + text[1:]


def _fixed(element: dict[str, Any]) -> tuple[str, Any] | None:
    for key, val in element.items():
        if key.startswith("fixed") or key.startswith("pattern"):
            return ("fixed" if key.startswith("fixed") else "pattern"), val
    return None


def matches_pattern(pattern: Any, actual: Any) -> bool:
    """FHIR pattern[x]: every element of the pattern is present in the value (arrays: each pattern item
    matches some item of the value)."""
    if isinstance(pattern, dict):
        return isinstance(actual, dict) and all(k in actual and matches_pattern(v, actual[k])
                                                for k, v in pattern.items())
    if isinstance(pattern, list):
        return isinstance(actual, list) and all(any(matches_pattern(p, a) for a in actual) for p in pattern)
    return pattern == actual


class Profile:
    """A StructureDefinition (derivation constraint) compiled into its differential's elements by id."""

    def __init__(self, definition: dict[str, Any]):
        self.url = definition.get("url", "")
        self.type = definition.get("type", "")
        self.name = definition.get("title") or definition.get("name") or self.url
        self.elements: dict[str, dict[str, Any]] = {}
        for element in (definition.get("differential") or {}).get("element") or []:
            element_id = element.get("id") or self._derive_id(element)
            self.elements[element_id] = element

    @staticmethod
    def _derive_id(element: dict[str, Any]) -> str:
        path = element.get("path", "")
        return f"{path}:{element['sliceName']}" if element.get("sliceName") else path


class ProfileCheck:
    """One resource against one profile."""

    def __init__(self, profile: Profile, resource: dict[str, Any], terminology: Terminology):
        self.profile = profile
        self.resource = resource
        self.terminology = terminology
        self.issues: list[Issue] = []
        self._nodes: dict[str, list[Node]] = {}

    def issue(self, code: str, message: str, expression: str, severity: str = "error") -> None:
        self.issues.append(Issue(code, f"{message} (profile {self.profile.url})", severity, [expression]))

    async def run(self) -> list[Issue]:
        for element_id, element in self.profile.elements.items():
            await self._check(element_id, element)
        return self.issues

    # ---- finding the instances of an element id ----

    def nodes(self, element_id: str) -> list[Node]:
        if element_id in self._nodes:
            return self._nodes[element_id]
        parent_id, _, segment = element_id.rpartition(".")
        if not parent_id:
            found = [Node(self.resource, self.profile.type)]
        else:
            found = [child for parent in self.nodes(parent_id) for child in self.children(parent, parent_id, segment)]
        self._nodes[element_id] = found
        return found

    def children(self, parent: Node, parent_id: str, segment: str) -> list[Node]:
        if not isinstance(parent.value, dict):
            return []
        name, _, slice_name = segment.partition(":")
        if name.endswith("[x]"):
            base = name[:-3]
            keys = [k for k in parent.value if k.startswith(base) and k[len(base):][:1].isupper()]
            if slice_name:  # a type slice: value[x]:valueQuantity
                keys = [k for k in keys if k == slice_name]
            slice_name = ""
        else:
            keys = [name] if name in parent.value else []
        out = []
        for key in keys:
            value = parent.value[key]
            if isinstance(value, list):
                out += [Node(item, f"{parent.expression}.{key}[{i}]") for i, item in enumerate(value)]
            else:
                out.append(Node(value, f"{parent.expression}.{key}"))
        if slice_name:
            out = [node for node in out if self._in_slice(node, f"{parent_id}.{name}", slice_name)]
        return out

    def _in_slice(self, node: Node, sliced_id: str, slice_name: str) -> bool:
        slicing = (self.profile.elements.get(sliced_id) or {}).get("slicing") or {}
        discriminators = slicing.get("discriminator") or []
        if not discriminators:
            return False
        for discriminator in discriminators:
            path = discriminator.get("path", "$this")
            if discriminator.get("type") not in ("value", "pattern"):
                return False  # other discriminator types are reported once, in _check
            target = f"{sliced_id}:{slice_name}" + ("" if path == "$this" else f".{path}")
            fixed = _fixed(self.profile.elements.get(target) or {})
            if fixed is None:
                return False
            values = [node.value] if path == "$this" else _values_at(node.value, path)
            if not any(matches_pattern(fixed[1], v) if fixed[0] == "pattern" else fixed[1] == v for v in values):
                return False
        return True

    # ---- the checks of one element ----

    async def _check(self, element_id: str, element: dict[str, Any]) -> None:
        parent_id, _, segment = element_id.rpartition(".")
        name = segment.partition(":")[0]
        for discriminator in (element.get("slicing") or {}).get("discriminator") or []:
            if discriminator.get("type") not in ("value", "pattern"):
                self.issue("not-supported", f"Slicing by '{discriminator.get('type')}' is not checked",
                           element_id, "warning")
        if parent_id and ("min" in element or "max" in element):
            minimum, maximum = element.get("min", 0), element.get("max", "*")
            for parent in self.nodes(parent_id):
                count = len(self.children(parent, parent_id, segment))
                slice_name = segment.partition(":")[2]
                if name.endswith("[x]"):  # value[x], or its type slice value[x]:valueQuantity
                    where = label = f"{parent.expression}.{slice_name or name.removesuffix('[x]')}"
                else:
                    where = f"{parent.expression}.{name}"
                    label = f"slice '{slice_name}' of {where}" if slice_name else where
                if count < minimum:
                    self.issue("required", f"{label} needs at least {minimum} value(s), found {count}", where)
                if maximum != "*" and count > int(maximum):
                    self.issue("structure", f"{label} allows at most {maximum} value(s), found {count}", where)
        nodes = self.nodes(element_id)
        types = [_upper_first(t.get("code", "")) for t in element.get("type") or []]
        if name.endswith("[x]") and types and ":" not in segment:
            for parent in self.nodes(parent_id):
                base = name[:-3]
                for key in parent.value if isinstance(parent.value, dict) else ():
                    if key.startswith(base) and key[len(base):][:1].isupper() and key[len(base):] not in types:
                        self.issue("structure", f"{key} is not allowed here: {name} must be "
                                   f"{' or '.join(types)}", f"{parent.expression}.{key}")
        fixed = _fixed(element)
        if fixed is not None:
            kind, expected = fixed
            for node in nodes:
                ok = matches_pattern(expected, node.value) if kind == "pattern" else node.value == expected
                if not ok:
                    self.issue("value", f"{node.expression} must {'match' if kind == 'pattern' else 'be'} "
                               f"{_short(expected)}, found {_short(node.value)}", node.expression)
        binding = element.get("binding") or {}
        if binding.get("valueSet") and binding.get("strength") in ("required", "extensible"):
            for node in nodes:
                await self._binding(node, binding)
        for constraint in element.get("constraint") or []:
            self._invariant(nodes, constraint)

    async def _binding(self, node: Node, binding: dict[str, Any]) -> None:
        value = node.value
        if isinstance(value, str):
            codings = [{"code": value}]
        elif isinstance(value, dict) and "coding" in value:
            codings = [c for c in value.get("coding") or [] if isinstance(c, dict) and c.get("code")]
        elif isinstance(value, dict) and value.get("code"):
            codings = [value]
        else:
            codings = []
        reference = binding["valueSet"]
        strength = binding["strength"]
        severity = "error" if strength == "required" else "warning"
        try:
            vs = await self.terminology.definitions.find("ValueSet", reference)
            if vs is None:
                self.issue("not-found", f"The {strength} binding's ValueSet {reference} is not known to this server; "
                           "the code was not checked", node.expression, "warning")
                return
            messages = []
            for coding in codings:
                verdict = await self.terminology.valuesets.member(vs, coding.get("system"), coding["code"])
                if verdict.member:
                    return
                messages += verdict.messages
        except ExpansionError as exc:
            self.issue("processing", f"The ValueSet {reference} cannot be evaluated: {exc}", node.expression, "warning")
            return
        found = ", ".join(f"{c.get('system')}|{c['code']}" if c.get("system") else c["code"] for c in codings)
        why = f": {'; '.join(messages)}" if messages else ""
        self.issue("code-invalid", f"{node.expression} must have a code from {reference} ({strength} binding); "
                   f"found {found or 'none'}{why}", node.expression, severity)

    def _invariant(self, nodes: list[Node], constraint: dict[str, Any]) -> None:
        expression = constraint.get("expression")
        if not expression:
            return
        severity = "error" if constraint.get("severity", "error") == "error" else "warning"
        for node in nodes:
            try:
                result = fhirpath(node.value, expression, {"resource": self.resource})
            except Exception as exc:  # a broken expression in a definition must not fail the request
                self.issue("processing", f"Invariant {constraint.get('key')} could not be evaluated: {exc}",
                           node.expression, "warning")
                continue
            if result != [True]:
                self.issue("invariant", f"{constraint.get('key')}: {constraint.get('human', expression)}",
                           node.expression, severity)


def _values_at(value: Any, path: str) -> list[Any]:
    current = [value]
    for step in path.split("."):
        nxt = []
        for item in current:
            if isinstance(item, dict) and step in item:
                got = item[step]
                nxt += got if isinstance(got, list) else [got]
        current = nxt
    return current


def _short(value: Any) -> str:
    text = orjson.dumps(value).decode() if not isinstance(value, str) else f"'{value}'"
    return text if len(text) <= 200 else text[:197] + "..."


async def check_profile(terminology: Terminology, definition: dict[str, Any], resource: dict[str, Any]) -> list[Issue]:
    profile = terminology.definitions.compiled(definition, Profile)
    if profile.type != resource.get("resourceType"):
        return [Issue("invalid", f"Profile {profile.url} is for {profile.type}, not {resource.get('resourceType')}",
                      "error", [str(resource.get("resourceType"))])]
    return await ProfileCheck(profile, resource, terminology).run()
