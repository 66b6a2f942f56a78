"""ValueSets: expansion (compose include/exclude of concepts, filters and imported value sets),
membership tests that need no expansion, and the token sets that `:in` / `:not-in` search with.

An expansion never passes for complete when it is not: a whole code system that the server holds
only as a fragment (LOINC, SNOMED CT) is refused as too costly, and filters over a fragment mark
the expansion unclosed (the R4 `valueset-unclosed` extension)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..model.outcome import FhirError, NotFound
from .codesystem import CodeSystemIndex, FilterError
from .definitions import Definitions, split_canonical

MAX_IMPORT_DEPTH = 8


class ExpansionError(FhirError):
    """The value set cannot be expanded (or evaluated) as asked: 422 with what and where."""

    status, code = 422, "processing"


@dataclass
class Entry:
    system: str
    code: str
    display: str | None = None
    version: str | None = None
    abstract: bool = False
    inactive: bool = False
    designations: list[dict[str, Any]] = field(default_factory=list)

    def contains(self) -> dict[str, Any]:
        out: dict[str, Any] = {"system": self.system}
        if self.abstract:
            out["abstract"] = True
        if self.inactive:
            out["inactive"] = True
        if self.version:
            out["version"] = self.version
        out["code"] = self.code
        if self.display:
            out["display"] = self.display
        if self.designations:
            out["designation"] = self.designations
        return out


@dataclass
class Expansion:
    entries: dict[tuple[str, str], Entry] = field(default_factory=dict)
    unclosed: bool = False  # built from a fragment of a code system: there may be more codes
    used_systems: dict[str, str | None] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


@dataclass
class Verdict:
    """Is a code in a value set? member None: cannot tell (an unknown or partly held code system)."""

    member: bool | None
    system: str | None = None
    display: str | None = None
    messages: list[str] = field(default_factory=list)


def _entry(system: str, code: str, cs: CodeSystemIndex | None, display: str | None = None) -> Entry:
    concept = cs.get(code) if cs is not None else None
    if concept is None:
        return Entry(system, code, display, cs.version if cs else None)
    return Entry(system, concept.code, display or concept.display, cs.version, concept.abstract, concept.inactive,
                 concept.designations)


class ValueSets:
    def __init__(self, definitions: Definitions, max_expansion: int = 10000):
        self.definitions = definitions
        self.max_expansion = max_expansion

    async def resolve(self, reference: str, *, expression: str) -> dict[str, Any]:
        """'ValueSet/id', a canonical URL or url|version; NotFound (404) naming `expression` when unknown."""
        if reference.startswith("ValueSet/") and "://" not in reference:
            return await self.definitions.read("ValueSet", reference.removeprefix("ValueSet/"))
        found = await self.definitions.find("ValueSet", reference)
        if found is None:
            raise NotFound(f"ValueSet '{reference}' is not known to this server", expression=[expression])
        return found

    # ---- expansion ----

    async def expand(self, vs: dict[str, Any], *, path: str = "ValueSet", stack: tuple[str, ...] = ()) -> Expansion:
        stack = stack or ((vs["url"],) if vs.get("url") else ())
        compose = vs.get("compose")
        if compose is None:
            if "expansion" in vs:  # a stored expansion only (no definition): use it as it is
                result = Expansion()
                _flatten(vs["expansion"].get("contains") or [], result)
                return result
            raise ExpansionError(f"ValueSet {vs.get('url') or vs.get('id')} has neither compose nor expansion",
                                 expression=[path])
        result = Expansion()
        for i, include in enumerate(compose.get("include") or []):
            part = await self._part(include, f"{path}.compose.include[{i}]", stack, result)
            for key, entry in part.items():
                result.entries.setdefault(key, entry)
            self._check_size(len(result.entries), f"{path}.compose.include[{i}]")
        for i, exclude in enumerate(compose.get("exclude") or []):
            part = await self._part(exclude, f"{path}.compose.exclude[{i}]", stack, result, exclude=True)
            for key in part:
                result.entries.pop(key, None)
        return result

    def _check_size(self, size: int, where: str) -> None:
        if size > self.max_expansion:
            raise ExpansionError(f"The expansion has more than {self.max_expansion} codes "
                                 "(FHIR_TERMINOLOGY_MAX_EXPANSION)", expression=[where], code="too-costly")

    async def _imported(self, reference: str, where: str, stack: tuple[str, ...]) -> tuple[dict[str, Any], tuple]:
        url = split_canonical(reference)[0]
        if url in stack or len(stack) >= MAX_IMPORT_DEPTH:
            raise ExpansionError(f"ValueSet {url} imports itself (directly or through others)", expression=[where])
        found = await self.definitions.find("ValueSet", reference)
        if found is None:
            raise ExpansionError(f"Imported ValueSet '{reference}' is not known to this server", expression=[where],
                                 code="not-found")
        return found, (*stack, url)

    async def _part(self, include: dict[str, Any], where: str, stack: tuple[str, ...], result: Expansion, *,
                    exclude: bool = False) -> dict[tuple[str, str], Entry]:
        """The codes one include (or exclude) selects: its system part intersected with its imports."""
        sets: list[dict[tuple[str, str], Entry]] = []
        for j, reference in enumerate(include.get("valueSet") or []):
            imported, inner = await self._imported(reference, f"{where}.valueSet[{j}]", stack)
            expansion = await self.expand(imported, path=f"{where}.valueSet[{j}]", stack=inner)
            result.unclosed |= expansion.unclosed
            result.used_systems.update(expansion.used_systems)
            result.warnings += [w for w in expansion.warnings if w not in result.warnings]
            sets.append(expansion.entries)
        if include.get("system"):
            sets.append(await self._system_part(include, where, result, exclude))
        if not sets:
            raise ExpansionError("An include needs a system or a valueSet", expression=[where])
        first, *rest = sets
        return {key: entry for key, entry in first.items() if all(key in other for other in rest)}

    async def _system_part(self, include: dict[str, Any], where: str, result: Expansion,
                           exclude: bool) -> dict[tuple[str, str], Entry]:
        system = include["system"]
        cs = await self.definitions.code_system(system, include.get("version"))
        if cs is not None:
            result.used_systems[system] = cs.version
        if include.get("concept"):
            out = {}
            for k, listed in enumerate(include["concept"]):
                code = listed.get("code", "")
                if cs is not None and cs.complete and cs.get(code) is None and not exclude:
                    raise ExpansionError(f"Code '{code}' is not in CodeSystem {system}",
                                         expression=[f"{where}.concept[{k}]"], code="code-invalid")
                entry = _entry(system, code, cs, listed.get("display"))
                if listed.get("designation"):
                    entry.designations = listed["designation"]
                out[(system, entry.code)] = entry
            return out
        if cs is None:
            raise ExpansionError(f"CodeSystem {system} is not known to this server, so the codes of "
                                 f"{'this exclude' if exclude else 'this include'} cannot be listed",
                                 expression=[f"{where}.system"], code="not-found")
        if include.get("filter"):
            codes = set(cs.concepts)
            for k, flt in enumerate(include["filter"]):
                try:
                    codes &= cs.filter(flt.get("property", ""), flt.get("op", ""), flt.get("value", ""))
                except FilterError as exc:
                    raise ExpansionError(str(exc), expression=[f"{where}.filter[{k}]"]) from exc
            warning = (f"CodeSystem {system} is held as a fragment: the filters were evaluated on the codes this "
                       "server holds, and there may be more")
            if not cs.complete and not exclude:
                result.unclosed = True
                if warning not in result.warnings:
                    result.warnings.append(warning)
            return {(system, code): _entry(system, code, cs) for code in cs.concepts if code in codes}
        if not cs.complete and not exclude:
            raise ExpansionError(f"CodeSystem {system} is held only as a fragment ({len(cs.concepts)} codes): an "
                                 "expansion of the whole system would be incomplete", expression=[f"{where}.system"],
                                 code="too-costly")
        self._check_size(len(cs.concepts), where)
        return {(system, code): _entry(system, code, cs) for code in cs.concepts}

    # ---- membership without expansion ----

    async def member(self, vs: dict[str, Any], system: str | None, code: str, *,
                     stack: tuple[str, ...] = ()) -> Verdict:
        """Whether system|code is in vs (system None: any system). Unknown or fragment code systems give
        member None with a message, never a silent yes or no."""
        stack = stack or ((vs["url"],) if vs.get("url") else ())
        compose = vs.get("compose")
        if compose is None:
            if "expansion" in vs:
                flat = Expansion()
                _flatten(vs["expansion"].get("contains") or [], flat)
                for (sys, c), entry in flat.entries.items():
                    if c == code and system in (None, sys):
                        return Verdict(True, sys, entry.display)
                return Verdict(False)
            raise ExpansionError(f"ValueSet {vs.get('url') or vs.get('id')} has neither compose nor expansion",
                                 expression=["ValueSet"])
        messages: list[str] = []
        found: Verdict | None = None
        for include in compose.get("include") or []:
            verdict = await self._in_part(include, system, code, stack)
            messages += verdict.messages
            if verdict.member:
                found = verdict
                break
            if verdict.member is None and found is None:
                found = verdict
        if found is None or not found.member:
            return Verdict(None if found is not None and found.member is None else False, messages=messages)
        for exclude in compose.get("exclude") or []:
            verdict = await self._in_part(exclude, found.system, code, stack)
            if verdict.member:
                return Verdict(False, messages=[f"Code '{code}' is excluded from the value set"])
        return found

    async def _in_part(self, include: dict[str, Any], system: str | None, code: str,
                       stack: tuple[str, ...]) -> Verdict:
        verdicts = []
        if include.get("system"):
            verdicts.append(await self._in_system(include, system, code))
        for reference in include.get("valueSet") or []:
            imported, inner = await self._imported(reference, "ValueSet.compose.include.valueSet", stack)
            verdicts.append(await self.member(imported, include.get("system") or system, code, stack=inner))
        if not verdicts:
            return Verdict(False)
        messages = [m for v in verdicts for m in v.messages]
        if any(v.member is False for v in verdicts):
            return Verdict(False, messages=messages)
        if any(v.member is None for v in verdicts):
            return Verdict(None, messages=messages)
        first = verdicts[0]
        return Verdict(True, first.system, next((v.display for v in verdicts if v.display), None), messages)

    async def _in_system(self, include: dict[str, Any], system: str | None, code: str) -> Verdict:
        included = include["system"]
        if system is not None and system != included:
            return Verdict(False)
        cs = await self.definitions.code_system(included, include.get("version"))
        if include.get("concept"):
            for listed in include["concept"]:
                if listed.get("code") == code:
                    display = listed.get("display") or (cs.get(code).display if cs and cs.get(code) else None)
                    return Verdict(True, included, display)
            return Verdict(False)
        if cs is None:
            return Verdict(None, messages=[f"CodeSystem {included} is not known to this server, so code '{code}' "
                                           "cannot be checked"])
        concept = cs.get(code)
        if include.get("filter"):
            codes = set(cs.concepts)
            for flt in include["filter"]:
                try:
                    codes &= cs.filter(flt.get("property", ""), flt.get("op", ""), flt.get("value", ""))
                except FilterError as exc:
                    raise ExpansionError(str(exc), expression=["ValueSet.compose.include.filter"]) from exc
            if concept is not None:
                return Verdict(concept.code in codes, included, concept.display)
        elif concept is not None:
            return Verdict(True, included, concept.display)
        if cs.complete:
            return Verdict(False, messages=[f"Code '{code}' is not in CodeSystem {included}"])
        return Verdict(None, messages=[f"Code '{code}' is not among the codes of {included} that this server holds "
                                       "(a fragment of the code system), so it cannot be checked"])

    # ---- token sets for search ----

    async def token_groups(self, vs: dict[str, Any]) -> tuple[list[tuple[str, frozenset[str] | None]], list[str]]:
        """The (system, codes) pairs a search matches for `:in` this value set (codes None: any code of the
        system), and warnings. A whole code system needs no expansion, so `:in` works on all of LOINC;
        otherwise the value set is expanded, and a warning says so when the expansion is unclosed."""
        compose = vs.get("compose") or {}
        excludes = compose.get("exclude") or []
        excluded_systems = {e.get("system") for e in excludes}
        whole = [i["system"] for i in compose.get("include") or []
                 if i.get("system") and not i.get("concept") and not i.get("filter") and not i.get("valueSet")]
        if whole and not any(e.get("valueSet") for e in excludes) and not excluded_systems.intersection(whole):
            others = [i for i in compose["include"] if i.get("system") not in whole or i.get("concept")
                      or i.get("filter") or i.get("valueSet")]
            groups: list[tuple[str, frozenset[str] | None]] = [(system, None) for system in dict.fromkeys(whole)]
            warnings: list[str] = []
            if others:
                more, warnings = await self.token_groups(dict(vs, compose=dict(compose, include=others)))
                groups += more
            return groups, warnings
        expansion = await self.expand(vs)
        by_system: dict[str, set[str]] = {}
        for system, code in expansion.entries:
            by_system.setdefault(system, set()).add(code)
        warnings = [f"ValueSet {vs.get('url')}: {w}" for w in expansion.warnings]
        return [(system, frozenset(codes)) for system, codes in by_system.items()], warnings


def _flatten(contains: list[dict[str, Any]], result: Expansion) -> None:
    for item in contains:
        if item.get("code") and item.get("system"):
            result.entries.setdefault((item["system"], item["code"]), Entry(
                item["system"], item["code"], item.get("display"), item.get("version"), item.get("abstract", False),
                item.get("inactive", False), item.get("designation") or []))
        _flatten(item.get("contains") or [], result)
