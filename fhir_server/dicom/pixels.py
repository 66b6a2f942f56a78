"""Frames and bulk data of a stored instance, cut from its Part 10 bytes (PS3.18 8.7.3): uncompressed
values in little endian, compressed frames as the device encoded them."""

from __future__ import annotations

import array
import io
from dataclasses import dataclass

import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian

PIXEL_DATA_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # Pixel Data, Float and Double Float Pixel Data
_WORD_BYTES = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}
_ARRAY_CODES = {2: "H", 4: "I", 8: "Q"}


class NoSuchData(LookupError):
    """The instance has no such frame or bulk data element."""


@dataclass
class Bodies:
    """What a frames or bulk data request answers: the bodies and the transfer syntax they are in."""
    bodies: list[bytes]
    transfer_syntax: str
    encapsulated: bool


def read(raw: bytes) -> Dataset:
    return pydicom.dcmread(io.BytesIO(raw), force=True)


def _little_endian(value: bytes, word_bytes: int) -> bytes:
    """Big endian words to little endian (Explicit VR Big Endian is retired, but devices still send it)."""
    if word_bytes <= 1:
        return value
    words = array.array(_ARRAY_CODES[word_bytes])
    whole = len(value) - len(value) % word_bytes
    words.frombytes(value[:whole])
    words.byteswap()
    return words.tobytes() + value[whole:]


def _number_of_frames(ds: Dataset) -> int:
    try:
        return max(int(ds.get("NumberOfFrames") or 1), 1)
    except (TypeError, ValueError):
        return 1


def _pixel_element(ds: Dataset):
    for tag in PIXEL_DATA_TAGS:
        if tag in ds and ds[tag].value:
            return ds[tag]
    raise NoSuchData("The instance has no pixel data")


def _native_pixels(ds: Dataset, element, transfer_syntax: str) -> bytes:
    value = bytes(element.value)
    if transfer_syntax != ExplicitVRBigEndian:
        return value
    bits = int(ds.get("BitsAllocated") or 8)
    word_bytes = bits // 8 if bits >= 16 else _WORD_BYTES.get(element.VR, 1)
    return _little_endian(value, word_bytes)


def _native_frame(pixels: bytes, index: int, frame_bits: int) -> bytes:
    start, end = index * frame_bits, (index + 1) * frame_bits
    if end > len(pixels) * 8:
        raise NoSuchData(f"Frame {index + 1} lies beyond the stored pixel data")
    if start % 8 == 0 and end % 8 == 0:
        return pixels[start // 8:end // 8]
    # 1-bit frames (segmentations) need not start on a byte: shift the frame's bits down to bit 0
    first, last = start // 8, (end + 7) // 8
    bits = int.from_bytes(pixels[first:last], "little") >> (start - first * 8)
    return (bits & ((1 << frame_bits) - 1)).to_bytes((frame_bits + 7) // 8, "little")


def _frame_bits(ds: Dataset) -> int:
    rows, columns = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    samples, bits = int(ds.get("SamplesPerPixel") or 1), int(ds.get("BitsAllocated") or 8)
    if str(ds.get("PhotometricInterpretation", "")).strip() == "YBR_FULL_422":
        samples = 2  # chroma is shared by pixel pairs: two samples per pixel on average
    return rows * columns * samples * bits


def _frames(ds: Dataset, transfer_syntax: str, indexes: list[int] | None = None) -> Bodies:
    """The frames at `indexes` (from 0; all when None), cutting only those."""
    element = _pixel_element(ds)
    wanted = list(range(_number_of_frames(ds))) if indexes is None else indexes
    if UID(transfer_syntax).is_encapsulated and element.tag == 0x7FE00010:
        needed, found = set(wanted), {}
        for index, frame in enumerate(generate_frames(element.value, number_of_frames=_number_of_frames(ds))):
            if index in needed:
                found[index] = frame
                if len(found) == len(needed):
                    break
        missing = needed - found.keys()
        if missing:
            raise NoSuchData(f"Frame {min(missing) + 1} is not in the stored pixel data")
        return Bodies([found[index] for index in wanted], transfer_syntax, True)
    pixels, frame_bits = _native_pixels(ds, element, transfer_syntax), _frame_bits(ds)
    if frame_bits <= 0:
        raise NoSuchData("The instance does not say how large its frames are (Rows, Columns, Bits Allocated)")
    return Bodies([_native_frame(pixels, index, frame_bits) for index in wanted], ExplicitVRLittleEndian, False)


def frames(raw: bytes, transfer_syntax: str, numbers: list[int]) -> Bodies:
    """The frames numbered (from 1) in `numbers`, in that order."""
    ds = read(raw)
    _pixel_element(ds)
    count = _number_of_frames(ds)
    beyond = [n for n in numbers if n > count]
    if beyond:
        raise NoSuchData(f"Frame {beyond[0]} does not exist: the instance has {count} frame(s)")
    return _frames(ds, transfer_syntax, [n - 1 for n in numbers])


def bulk_data(raw: bytes, transfer_syntax: str, path: str) -> Bodies:
    """The bulk data element at `path` (tag/item/tag..., as in the metadata's BulkDataURIs); compressed
    pixel data comes as its frames."""
    ds = read(raw)
    steps = path.strip("/").split("/")
    current: Dataset = ds
    element = None
    for position, step in enumerate(steps):
        if position % 2 == 0:
            try:
                tag = int(step, 16) if len(step) == 8 else -1
            except ValueError:
                tag = -1
            if tag < 0 or tag not in current:
                raise NoSuchData(f"The instance has no bulk data at {path}")
            element = current[tag]
        else:
            items = element.value if element is not None and element.VR == "SQ" else []
            if not step.isdigit() or int(step) >= len(items):
                raise NoSuchData(f"The instance has no bulk data at {path}")
            current = items[int(step)]
    if element is None or len(steps) % 2 == 0 or not isinstance(element.value, bytes | bytearray):
        raise NoSuchData(f"The instance has no bulk data at {path}")
    if current is ds and element.tag in PIXEL_DATA_TAGS:
        if UID(transfer_syntax).is_encapsulated and element.tag == 0x7FE00010:
            return _frames(ds, transfer_syntax)
        return Bodies([_native_pixels(ds, element, transfer_syntax)], ExplicitVRLittleEndian, False)
    value = bytes(element.value)
    if transfer_syntax == ExplicitVRBigEndian:
        value = _little_endian(value, _WORD_BYTES.get(element.VR, 1))
    return Bodies([value], ExplicitVRLittleEndian, False)
