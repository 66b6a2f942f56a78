"""DICOM JSON (PS3.18 F.2) for a dataset: the document pydicom's `Dataset.to_json_dict` writes, several times faster.

pydicom turns every raw element into a DataElement (through `Dataset.__getitem__`, which stores it back) before
writing it, and that is most of the cost. Here the common elements are written straight from their raw bytes with
pydicom 3.0's decoding rules (`pydicom.values`); anything this module is not sure of goes through pydicom itself,
element by element, so the document is the same either way, exceptions included."""

from __future__ import annotations

import base64
import struct
from collections.abc import Callable
from typing import Any

from pydicom import config
from pydicom.charset import default_encoding
from pydicom.datadict import DicomDictionary
from pydicom.dataelem import DataElement, RawDataElement, empty_value_for_VR
from pydicom.dataset import Dataset
from pydicom.hooks import hooks, raw_element_value, raw_element_vr
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import _LUT_DESCRIPTOR_TAGS
from pydicom.valuerep import AMBIGUOUS_VR, BYTES_VR, FLOAT_VR, INT_VR, VR, PersonName

BULK_DATA_THRESHOLD = 1024  # base64 characters, as pydicom counts it
_INLINE_LIMIT = (BULK_DATA_THRESHOLD // 4) * 3  # what pydicom compares the unencoded length with
_BINARY_VRS = (BYTES_VR | AMBIGUOUS_VR) - {VR.US_SS}  # written as InlineBinary or BulkDataURI
_RAW_BINARY_VRS = BYTES_VR - {VR.UN}  # pydicom may give a raw UN element another VR
_INT_VRS = (INT_VR - {VR.AT}) | {VR.US_SS}
_EXACT_FLOAT = 2**53  # integers a float holds exactly
_LUT_DESCRIPTORS = frozenset(_LUT_DESCRIPTOR_TAGS)  # pydicom corrects their first value
_ESC = b"\x1b"  # an ISO 2022 escape sequence: pydicom switches character sets inside the value

Attribute = dict[str, Any]
Decoder = Callable[[bytes, str, bool], list[Any] | None]


def dataset_json(ds: Dataset) -> dict[str, Attribute]:
    """`ds.to_json_dict(bulk_data_threshold=1024, bulk_data_element_handler=lambda element: "")`, faster."""
    if not _default_decoding():
        return ds.to_json_dict(BULK_DATA_THRESHOLD, _no_uri)
    return _dataset(ds)


def _no_uri(element: DataElement) -> str:
    return ""


def _default_decoding() -> bool:
    """Whether pydicom decodes values the way this module does: its default settings, bar reading validation
    (which only warns, or is skipped, unless it raises)."""
    return (config.settings.reading_validation_mode != config.RAISE and not config.use_DS_decimal
            and not config.use_DS_numpy and not config.use_IS_numpy and not config.datetime_conversion
            and config.data_element_callback is None and not hooks.raw_element_kwargs
            and hooks.raw_element_vr is raw_element_vr and hooks.raw_element_value is raw_element_value)


def _dataset(ds: Dataset) -> dict[str, Attribute]:
    encoding = ""  # the codec for its text values, looked up at the first raw element
    document: dict[str, Attribute] = {}
    for tag, element in ds._dict.items():
        attribute = None
        if element.__class__ is RawDataElement:
            if not encoding:
                encoding = _first_encoding(ds)
            attribute = _raw_attribute(element, encoding)
            if attribute is None:
                element = ds[tag]  # pydicom converts it (and stores it back), as its own writer would
        document[f"{tag:08X}"] = attribute if attribute is not None else _attribute(element)
    return document


def _first_encoding(ds: Dataset) -> str:
    """The codec pydicom decodes text values without escape sequences with (`pydicom.charset.decode_bytes`)."""
    encodings = ds.original_character_set or ds._character_set
    if isinstance(encodings, str):
        return encodings or default_encoding
    return encodings[0] if encodings else default_encoding


def _raw_attribute(raw: RawDataElement, encoding: str) -> Attribute | None:
    """The attribute for an element still in its encoded form, or None where pydicom should convert it: deferred
    values, sequences, UN, AT, ambiguous or unknown VRs, LUT descriptors, and values pydicom decodes specially."""
    value = raw.value
    if value is None and raw.length:
        return None  # read deferred
    vr = raw.VR
    if vr is None:  # implicit VR: pydicom looks the tag up in its dictionary first
        entry = DicomDictionary.get(raw.tag)
        if entry is None:
            return None
        vr = entry[0]
    binary = vr in _RAW_BINARY_VRS
    decode = _DECODERS.get(vr)
    if not binary and (decode is None or raw.tag in _LUT_DESCRIPTORS):
        return None
    if not value:
        return {"vr": vr}
    if decode is None:  # a binary VR
        return _binary(vr, value)
    values = decode(value, encoding, raw.is_little_endian)
    if values is None:
        return None
    return {"vr": vr, "Value": values} if values else {"vr": vr}


def _attribute(element: DataElement) -> Attribute:
    """`element.to_json_dict` for values of the usual types, falling back to it for the others."""
    vr, value = element.VR, element.value
    if vr in _BINARY_VRS:
        if isinstance(value, bytes):
            return _binary(vr, value)
    elif vr == VR.SQ:
        if isinstance(value, Sequence):
            return {"vr": vr, "Value": [_dataset(item) for item in value]}
    elif vr == VR.PN:
        names = _person_names(value)
        if names is not None:
            return {"vr": vr, "Value": names} if names else {"vr": vr}
    elif vr != VR.AT:
        values = _plain_values(value)
        if values is not None:
            try:
                return {"vr": vr, "Value": _numbers(vr, values)} if values else {"vr": vr}
            except (TypeError, ValueError, OverflowError):
                pass  # not a number: pydicom's own writer raises
    return element.to_json_dict(_no_uri, BULK_DATA_THRESHOLD)


def _binary(vr: str, value: bytes) -> Attribute:
    if not value:
        return {"vr": vr}
    if len(value) > _INLINE_LIMIT:
        return {"vr": vr, "BulkDataURI": ""}
    return {"vr": vr, "InlineBinary": base64.b64encode(value).decode("ascii")}


def _person_names(value: Any) -> list[Attribute] | None:
    """The PN values of a converted element, [] when empty, None if pydicom should write it."""
    if value is None:
        return []
    if isinstance(value, PersonName):
        names = [value] if value else []
    elif isinstance(value, MultiValue) and len(value) != 1:
        names = list(value)
    else:
        return None
    if not all(isinstance(name, PersonName) and name.components for name in names):
        return None
    return [_person_name(name.components) for name in names]


def _person_name(components: tuple[str, ...] | list[str]) -> Attribute:
    name = {"Alphabetic": components[0]}
    if len(components) > 1:
        name["Ideographic"] = components[1]
    if len(components) > 2:
        name["Phonetic"] = components[2]
    return name


def _plain_values(value: Any) -> list[Any] | None:
    """The values of a converted element as pydicom lists them, [] when empty (VM 0), None for types left to it."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, int | float):
        return [value]
    if isinstance(value, list | tuple | MultiValue) and len(value) != 1:
        return list(value)
    return None


def _numbers(vr: str, values: list[Any]) -> list[Any]:
    """pydicom's `jsonrep.convert_to_python_number` for a non-empty Value list."""
    number: type[int] | type[float]
    if vr in _INT_VRS:
        number = int
    elif vr in FLOAT_VR:
        number = float
    else:
        return values
    return [number(v) if v is not None else empty_value_for_VR(vr) for v in values]


# Decoders from raw bytes to the JSON Value list, mirroring `pydicom.values`: [] for no value (VM 0), None where
# pydicom should decode the element (a value it would fail on or decode with replacement characters, say).

def _listed(items: list[Any]) -> list[Any]:
    """A single empty string is no value; empty strings among several values stay."""
    return items if len(items) > 1 or items[0] else []


def _text(value: bytes, encoding: str) -> str | None:
    if _ESC in value:
        return None
    try:
        return value.decode(encoding)
    except (LookupError, UnicodeError):
        return None


def _strings(value: bytes, encoding: str, little_endian: bool) -> list[Any]:  # AS, CS, DA, DT, TM
    return _listed(value.decode(default_encoding).rstrip(" \x00").split("\\"))


def _application_entities(value: bytes, encoding: str, little_endian: bool) -> list[Any]:
    return _listed([item.strip() for item in value.decode(default_encoding).split("\\")])


def _uids(value: bytes, encoding: str, little_endian: bool) -> list[Any]:
    return _listed([item.strip() for item in value.decode(default_encoding).rstrip("\0 ").split("\\")])


def _uri(value: bytes, encoding: str, little_endian: bool) -> list[Any]:
    return _listed([value.decode(default_encoding).rstrip()])


def _texts(value: bytes, encoding: str, little_endian: bool) -> list[Any] | None:  # SH, LO, UC
    text = _text(value, encoding)
    return None if text is None else _listed([item.rstrip("\0 ") for item in text.split("\\")])


def _single_text(value: bytes, encoding: str, little_endian: bool) -> list[Any] | None:  # ST, LT, UT
    text = _text(value, encoding)
    return None if text is None else _listed([text.rstrip("\0 ")])


def _names(value: bytes, encoding: str, little_endian: bool) -> list[Any] | None:
    text = _text(value.rstrip(b"\x00 "), encoding)
    if text is None:
        return None
    names = []
    for name in text.split("\\"):
        components = name.split("=")
        while components and not components[-1]:
            components.pop()
        names.append(components)
    if len(names) == 1 and not names[0]:
        return []
    if not all(names):
        return None  # an empty name among several: pydicom fails on it
    return [_person_name(components) for components in names]


def _integer_strings(value: bytes, encoding: str, little_endian: bool) -> list[Any] | None:
    items = value.decode(default_encoding).rstrip(" \x00").split("\\")
    if len(items) == 1 and not items[0].strip():
        return []
    try:
        numbers = [int(item) for item in items]
    except ValueError:
        return None  # "1.0", not a number or an empty value: pydicom's IS decides
    # IS compares the integer with float(value), which is inexact beyond 2**53
    return numbers if all(-_EXACT_FLOAT < n < _EXACT_FLOAT for n in numbers) else None


def _decimal_strings(value: bytes, encoding: str, little_endian: bool) -> list[Any] | None:
    items = value.decode(default_encoding).strip().rstrip(" \x00").split("\\")
    if len(items) == 1 and not items[0].strip():
        return []
    try:
        return [float(item) for item in items]
    except ValueError:
        return None


def _binary_numbers(code: str) -> Decoder:
    single = {True: struct.Struct("<" + code), False: struct.Struct(">" + code)}
    size = single[True].size

    def decode(value: bytes, encoding: str, little_endian: bool) -> list[Any] | None:
        if len(value) == size:
            return list(single[little_endian].unpack(value))
        if len(value) % size:
            return None  # pydicom fails on it, or makes it UN
        return list(struct.unpack(f"{'<' if little_endian else '>'}{len(value) // size}{code}", value))

    return decode


_DECODERS: dict[str, Decoder] = {
    VR.AE: _application_entities, VR.AS: _strings, VR.CS: _strings, VR.DA: _strings, VR.DT: _strings,
    VR.TM: _strings, VR.UI: _uids, VR.UR: _uri, VR.SH: _texts, VR.LO: _texts, VR.UC: _texts, VR.ST: _single_text,
    VR.LT: _single_text, VR.UT: _single_text, VR.PN: _names, VR.IS: _integer_strings, VR.DS: _decimal_strings,
    VR.US: _binary_numbers("H"), VR.SS: _binary_numbers("h"), VR.UL: _binary_numbers("L"),
    VR.SL: _binary_numbers("l"), VR.UV: _binary_numbers("Q"), VR.SV: _binary_numbers("q"),
    VR.FL: _binary_numbers("f"), VR.FD: _binary_numbers("d"),
}
