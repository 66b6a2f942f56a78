"""DIMSE response statuses in the form pynetdicom's handlers return them: a dataset with the Status and,
for a refusal, the reason (ErrorComment) and the elements at fault (OffendingElement)."""

from __future__ import annotations

from pydicom.dataset import Dataset


def status(code: int, comment: str | None = None, offending: list[int] | None = None) -> Dataset:
    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = comment[:64]  # LO: 64 characters at most
    if offending:
        ds.OffendingElement = offending
    return ds
