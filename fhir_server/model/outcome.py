"""Errors raised anywhere in the server, and the OperationOutcome that reports them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Issue:
    code: str  # OperationOutcome.issue.code (IssueType), e.g. "invalid", "not-found"
    diagnostics: str
    severity: str = "error"
    expression: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"severity": self.severity, "code": self.code, "diagnostics": self.diagnostics}
        if self.expression:
            out["expression"] = self.expression
        return out


def operation_outcome(issues: list[Issue]) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [i.to_json() for i in issues]}


class FhirError(Exception):
    """An error that reaches the client as an HTTP status and an OperationOutcome."""

    status = 400
    code = "invalid"

    def __init__(self, diagnostics: str, *, expression: list[str] | None = None,
                 issues: list[Issue] | None = None, status: int | None = None, code: str | None = None):
        super().__init__(diagnostics)
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        self.issues = issues or [Issue(self.code, diagnostics, expression=expression or [])]

    def outcome(self) -> dict[str, Any]:
        return operation_outcome(self.issues)


class BadRequest(FhirError):
    status, code = 400, "invalid"


class NotFound(FhirError):
    status, code = 404, "not-found"


class Gone(FhirError):
    status, code = 410, "deleted"

    def __init__(self, diagnostics: str, *, version_id: int, last_updated: str):
        super().__init__(diagnostics)
        self.version_id = version_id
        self.last_updated = last_updated


class PreconditionFailed(FhirError):
    status, code = 412, "conflict"


class Conflict(FhirError):
    status, code = 409, "conflict"


class Unprocessable(FhirError):
    """The resource is well-formed JSON but fails validation (spec: 422)."""

    status, code = 422, "processing"


class UnsupportedMediaType(FhirError):
    status, code = 415, "not-supported"


class NotAcceptable(FhirError):
    status, code = 406, "not-supported"


class Forbidden(FhirError):
    status, code = 403, "forbidden"


class ServiceUnavailable(FhirError):
    status, code = 503, "transient"
