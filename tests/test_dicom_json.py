"""The fast DICOM JSON writer against pydicom's own `Dataset.to_json_dict`: the same document (keys, their order,
number types) or the same exception, for every pydicom test file and for hand-built datasets covering each kind of
element, both as read (raw elements) and once pydicom has converted every element."""

from __future__ import annotations

import copy
import functools
import io
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pydicom
import pydicom.data
import pytest
from pydicom import config
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from fhir_server.dicom.dicom_json import dataset_json
from fhir_server.dicom.instance import _bulk_data_paths, dicom_json  # sets reading_validation_mode = IGNORE

pytestmark = pytest.mark.filterwarnings("ignore")  # pydicom warns about the odd values on purpose here

MODES = {"ignore": config.IGNORE, "warn": config.WARN, "raise": config.RAISE}
SYNTAXES = [ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian]


def pydicom_json(ds: Dataset) -> dict[str, Any]:
    return ds.to_json_dict(bulk_data_threshold=1024, bulk_data_element_handler=lambda element: "")


def canonical(value: Any) -> Any:
    """The document in a form where 1 and 1.0 differ and so does the key order; UIDs are just strings."""
    if isinstance(value, dict):
        return [(key, canonical(item)) for key, item in value.items()]
    if isinstance(value, list):
        return [canonical(item) for item in value]
    if isinstance(value, str):
        return str(value)
    if isinstance(value, float):
        return "float", repr(float(value))
    if isinstance(value, int):
        return "int", int(value)
    return "other", type(value).__name__, repr(value)


def outcome(write: Callable[[Dataset], dict[str, Any]], ds: Dataset) -> Any:
    try:
        return canonical(write(ds))
    except Exception as exc:
        return "raises", type(exc).__name__, str(exc)


def with_bulk_data_paths(ds: Dataset) -> dict[str, Any]:
    document = pydicom_json(ds)
    _bulk_data_paths(document, "bulkdata/")
    return document


def mismatches(read: Callable[[], Dataset], mode: int) -> list[str]:
    """Where the fast writer differs from pydicom's, under reading validation `mode`, on the datasets `read`
    returns afresh each time."""
    with validation(mode):
        expected = outcome(pydicom_json, read())
        found = []
        if outcome(dataset_json, read()) != expected:
            found.append("as read")
        converted = read()
        outcome(pydicom_json, converted)  # converts every element it reaches
        if outcome(dataset_json, converted) != expected:
            found.append("once converted")
        if outcome(dicom_json, read()) != outcome(with_bulk_data_paths, read()):
            found.append("dicom_json")
    return found


@contextmanager
def validation(mode: int) -> Iterator[None]:
    previous = config.settings.reading_validation_mode
    config.settings.reading_validation_mode = mode
    try:
        yield
    finally:
        config.settings.reading_validation_mode = previous


@functools.cache
def pydicom_test_files() -> tuple[bytes, ...]:
    """Every test file pydicom ships (its files to download are left out: no network) that it can read at all."""
    root = Path(pydicom.data.__file__).parent
    paths = sorted(path for folder in ("test_files", "charset_files") for path in (root / folder).glob("*")
                   if path.is_file() and path.suffix != ".py")
    files = []
    for path in paths:
        with open(path, "rb") as file:
            data = file.read()
        try:
            pydicom.dcmread(io.BytesIO(data), force=True)
        except Exception:
            continue
        files.append(data)
    return tuple(files)


@pytest.mark.parametrize("mode", ["ignore", "warn"])
def test_pydicom_test_files(mode: str) -> None:
    files = pydicom_test_files()
    assert len(files) >= 80
    failures = {number: found for number, data in enumerate(files)
                if (found := mismatches(lambda data=data: pydicom.dcmread(io.BytesIO(data), force=True), MODES[mode]))}
    assert not failures


def raw(tag: int, vr: str, value: bytes) -> RawDataElement:
    """An element as pydicom holds it before decoding: a value pydicom would not accept from a program."""
    return RawDataElement(Tag(tag), vr, len(value), value, 0, False, True)


def item(**keywords: Any) -> Dataset:
    ds = Dataset()
    for keyword, value in keywords.items():
        setattr(ds, keyword, value)
    return ds


def person_names() -> Dataset:
    ds = item(SpecificCharacterSet="ISO_IR 192", PatientName="Yamada^Tarou=山田^太郎=やまだ^たろう",
              ReferringPhysicianName="Müller^Jürgen=", PerformingPhysicianName=["A^B", "=C", "D^E=F", "G=H=I=J"],
              OperatorsName="^Given", PhysiciansOfRecord="")
    ds[0x00081060] = raw(0x00081060, "PN", "Doe^John=\u5c71\u7530^\u592a\u90ce==\\Roe ".encode())
    return ds


def empty_name_among_several() -> Dataset:
    return item(PerformingPhysicianName=["A^B", ""])


def attribute_tags() -> Dataset:
    ds = item(DimensionIndexPointer=[0x00100010, 0x7FE00010], FunctionalGroupPointer=0x00280010,
              FrameIncrementPointer=None)
    ds[0x0028000A] = raw(0x0028000A, "AT", struct.pack("<HHHH", 0x0008, 0x0018, 0x0020, 0x0013))
    return ds


def numbers() -> Dataset:
    ds = item(SliceThickness="1.5", PixelSpacing=["0.5", "-2.25e1"], ImagePositionPatient=[" 1", "2 ", "3.0"],
              InstanceNumber="7", AcquisitionNumber="1.0", EchoNumbers=["1", "-2", "+3"], FrameTime=None,
              Rows=512, AcquisitionMatrix=[0, 256, 256, 0], SimpleFrameList=[1, 2**32 - 1], ReferencePixelX0=-5,
              TagAngleSecondAxis=-3, RecommendedDisplayFrameRateInFloat=29.97, TimeRange=[0.1, 1e300],
              SelectorSVValue=[-(2**63), 2**63 - 1], SelectorUVValue=[2**64 - 1])
    ds[0x00281053] = raw(0x00281053, "DS", b" 0.25\\0.125 ")
    lut = item(LUTExplanation="signed")
    lut[0x00283002] = raw(0x00283002, "SS", struct.pack("<3h", -1, 0, 16))  # LUT Descriptor: pydicom fixes it
    lut.add_new(0x00283006, "OW", b"\x00\x10" * 4)
    ds.VOILUTSequence = [lut]
    return ds


def binary_number_of_a_wrong_length() -> Dataset:
    ds = item()
    ds[0x00081163] = raw(0x00081163, "FD", b"\x00" * 6)
    return ds


def integer_string_not_a_number() -> Dataset:
    ds = item()
    ds[0x00200013] = raw(0x00200013, "IS", b"12a ")
    return ds


def decimal_string_not_a_number() -> Dataset:
    ds = item()
    ds[0x00180050] = raw(0x00180050, "DS", b"1,5 ")
    return ds


def integer_strings_with_an_empty_value() -> Dataset:
    ds = item()
    ds[0x00180086] = raw(0x00180086, "IS", b"1\\\\3 ")
    return ds


def decimal_strings_with_an_empty_value() -> Dataset:
    return item(PixelSpacing=["0.5", ""])


def integer_strings_with_fractions() -> Dataset:
    ds = item()
    ds[0x00200013] = raw(0x00200013, "IS", b"2.5 ")
    ds[0x00200012] = raw(0x00200012, "IS", b"99999999999999999999")
    return ds


def sequences() -> Dataset:
    inner = item(ReferencedSOPClassUID="1.2.840.10008.5.1.4.1.1.2", ReferencedSOPInstanceUID="1.2.3.4")
    nested = item(CodeValue="121311", CodingSchemeDesignator="DCM", CodeMeaning="Localizer",
                  ReferencedSOPSequence=[inner, Dataset()])
    return item(ReferencedImageSequence=[Dataset(), nested], ReferencedStudySequence=[],
                ProcedureCodeSequence=[item(ConceptCodeSequence=[item(CodeValue="X", PatientName="A^B")])])


def private_tags() -> Dataset:
    ds = item(PatientID="P1")
    block = ds.private_block(0x0029, "ACME 1.0", create=True)
    block.add_new(0x01, "LO", "private text")
    block.add_new(0x02, "US", [1, 2])
    block.add_new(0x03, "OB", b"\x01\x02\x03\x04")
    block.add_new(0x04, "SQ", [item(PatientID="nested"), Dataset()])
    known = ds.private_block(0x0009, "GEMS_IDEN_01", create=True)  # in pydicom's private dictionary
    known.add_new(0x01, "LO", "Full fidelity")
    known.add_new(0x02, "SH", "suite")
    ds[0x00111010] = raw(0x00111010, "UN", b"no creator")
    return ds


def binary_values() -> Dataset:
    ds = item(BitsAllocated=16, PixelRepresentation=0, Rows=25, Columns=20, SamplesPerPixel=1,
              VerticesOfThePolygonalOutline=struct.pack("<2f", 1.5, -2), DoublePointCoordinatesData=b"\0" * 8,
              LongPrimitivePointIndexList=b"", SelectorOVValue=b"\xff" * 8)
    block = ds.private_block(0x0009, "BULK", create=True)
    block.add_new(0x01, "OB", b"\x00\x01" * 384)  # 768 bytes: 1024 in base64, still inline
    block.add_new(0x02, "OB", b"\x00\x01" * 385)  # 770: bulk data
    block.add_new(0x03, "UN", b"\x01\x02")
    ds.add_new(0x7FE00010, "OW", b"\x00\x01" * 500)  # Pixel Data
    waveforms = [item(WaveformBitsAllocated=16), item(WaveformBitsAllocated=8)]
    waveforms[0].add_new(0x54001010, "OW", b"\x00\x02" * 1000)  # Waveform Data
    waveforms[1].add_new(0x54001010, "OB", b"\x00\x02")
    ds.WaveformSequence = waveforms
    ds[0x00100020] = raw(0x00100020, "UN", b"PATIENT1")  # a known tag sent as UN: pydicom gives it its VR
    return ds


def latin_1() -> Dataset:
    ds = item(SpecificCharacterSet="ISO_IR 100", PatientName="Müller^Jürgen", InstitutionName="Straße 1",
              ImageComments="Ça va\\ oui", AdditionalPatientHistory="née  ")
    ds[0x00081030] = raw(0x00081030, "LO", "Thorax à".encode("latin-1") + b"\\Abdomen ")
    return ds


def utf_8() -> Dataset:
    ds = item(SpecificCharacterSet="ISO_IR 192", PatientName="Ωmega^Ψ", InstitutionName="東京病院",
              TextValue="многострочный\r\nтекст")
    ds[0x00081030] = raw(0x00081030, "LO", b"bad \xff\xfe bytes")  # pydicom decodes with replacement characters
    ds[0x001021B0] = raw(0x001021B0, "LT", "ünicode\\text ".encode())
    return ds


def iso_2022() -> Dataset:
    ds = item(SpecificCharacterSet=["", "ISO 2022 IR 87"])
    ds[0x00100010] = raw(0x00100010, "PN", b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B=\x1b$B$d$^$@\x1b(B^"
                                             b"\x1b$B$?$m$&\x1b(B")
    ds[0x00081030] = raw(0x00081030, "LO", b"\x1b$B;3ED\x1b(B")
    return ds


def empty_values() -> Dataset:
    ds = item(PatientID="", PatientName="", StudyInstanceUID="", StudyDate="", SeriesNumber=None, SliceThickness=None,
              Rows=None, FrameTime=None, ImageType=["ORIGINAL", ""], StationName="", ReferencedImageSequence=[],
              RetrieveURL="", TextValue="", AccessionNumber=" ", TimeRange=[], FrameIncrementPointer=None,
              RecommendedDisplayFrameRateInFloat=None, SelectorOVValue=b"")
    for tag, vr, value in ((0x00100030, "DA", b"  "), (0x00100040, "CS", b"  "), (0x00101010, "AS", b"  "),
                           (0x00080201, "SH", b"  "), (0x00200052, "UI", b"\0\0"), (0x00400254, "LO", b"\0 "),
                           (0x00281053, "DS", b"  "), (0x00200013, "IS", b"  "), (0x00081060, "PN", b"  ")):
        ds[tag] = raw(tag, vr, value)
    return ds


def strings() -> Dataset:
    ds = item(ImageType=["ORIGINAL", "PRIMARY", "AXIAL"], RetrieveAETitle=" STORESCP ", PatientAge="045Y",
              StudyDate="20240102", StudyTime="101010.123", AcquisitionDateTime="20240102101010.5+0100",
              RetrieveURL="https://pacs.example/wado ", SOPClassUID="1.2.840.10008.5.1.4.1.1.2",
              StudyDescription="Head ", SeriesDescription=" leading", ImageComments="back\\slash stays",
              DerivationDescription="a\\b", LongCodeValue="unlimited characters")
    ds[0x0040A160] = raw(0x0040A160, "UT", b"first line\r\nsecond\\line \0")
    ds[0x00081195] = raw(0x00081195, "UI", b"1.2.3\\ 4.5.6 \0")
    ds[0x00400241] = raw(0x00400241, "AE", b" A1 \\B2  ")
    ds[0x00080119] = raw(0x00080119, "UC", b"unlimited\\characters ")
    return ds


def retired_and_unknown() -> Dataset:
    ds = item(PatientID="P2")
    ds.add_new(0x00080010, "SH", "ACR-NEMA 2.0")  # Recognition Code, retired
    ds.add_new(0x00280040, "CS", "RECT")  # Image Format, retired
    ds.add_new(0x00280200, "US", 0x7FE0)  # Image Location, retired
    ds.add_new(0x00089999, "LO", "not in the dictionary")
    ds[0x0008999A] = raw(0x0008999A, "UN", b"\x01\x02\x03\x04")
    ds.add_new(0x00100000, "UL", 42)  # a group length
    return ds


CASES = [person_names, empty_name_among_several, attribute_tags, numbers, binary_number_of_a_wrong_length,
         integer_string_not_a_number, decimal_string_not_a_number, integer_strings_with_an_empty_value,
         decimal_strings_with_an_empty_value, integer_strings_with_fractions, sequences, private_tags,
         binary_values, latin_1, utf_8, iso_2022, empty_values, strings, retired_and_unknown]


def part10(ds: Dataset, syntax: str) -> bytes:
    """The dataset as a Part 10 file, its raw elements written as they are."""
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    in_encoding(ds, syntax == ImplicitVRLittleEndian, syntax != ExplicitVRBigEndian)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def in_encoding(ds: Dataset, implicit_vr: bool, little_endian: bool) -> None:
    """Declare the dataset and its items already in the file's encoding: pydicom then writes raw elements unchanged
    instead of decoding them first (which it fails to for some on purpose)."""
    ds.set_original_encoding(implicit_vr, little_endian, ds._character_set)
    for element in ds._dict.values():
        if not element.is_raw and element.VR == "SQ":
            for child in element.value:
                in_encoding(child, implicit_vr, little_endian)


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("build", CASES, ids=lambda build: build.__name__)
def test_built_dataset(build: Callable[[], Dataset], mode: str) -> None:
    built = build()
    assert not mismatches(lambda: copy.deepcopy(built), MODES[mode])


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("syntax", SYNTAXES, ids=["implicit", "explicit", "big-endian"])
@pytest.mark.parametrize("build", CASES, ids=lambda build: build.__name__)
def test_dataset_as_read(build: Callable[[], Dataset], syntax: str, mode: str) -> None:
    data = part10(build(), syntax)
    assert not mismatches(lambda: pydicom.dcmread(io.BytesIO(data), force=True), MODES[mode])
