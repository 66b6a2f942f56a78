"""The referral Task's status machine, enforced on every write that changes Task.status."""

from __future__ import annotations

from ..model.outcome import Unprocessable
from . import WriteRule

# status -> the statuses it may change to. A status not listed here (rejected, completed, cancelled, and
# those the alliance's referrals do not use) is final. draft is FHIR's status before a request is made.
TRANSITIONS: dict[str, tuple[str, ...]] = {
    "draft": ("requested", "cancelled"),
    "requested": ("received", "cancelled"),
    "received": ("accepted", "rejected", "cancelled"),
    "accepted": ("in-progress", "cancelled"),
    "in-progress": ("completed", "cancelled"),
}


class TaskStatusMachine(WriteRule):
    """A Task may be created in any status (records from elsewhere arrive as they are); afterwards each
    change of status must be one of TRANSITIONS, else 422 (a business rule, FHIR's status for it)."""

    types = ("Task",)
    needs_previous = True

    async def check(self, service, tx, resource_type, resource_id, resource, previous) -> None:
        if resource is None or previous is None:
            return
        old, new = previous.get("status"), resource.get("status")
        if old == new or new in TRANSITIONS.get(old, ()):
            return
        allowed = TRANSITIONS.get(old, ())
        onward = f"it may go to {', '.join(allowed)}" if allowed else f"'{old}' is final"
        raise Unprocessable(f"Task/{resource_id}: status change {old} → {new} is not allowed; from {old} {onward}",
                            expression=["Task.status"], code="business-rule")
