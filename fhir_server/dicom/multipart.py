"""multipart/related bodies (RFC 2387 over RFC 2046's multipart syntax): split a received body into its
parts, and frame the parts of an answer."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

_CRLF = b"\r\n"


class MultipartError(ValueError):
    """The body is not the multipart body its Content-Type announces."""


@dataclass
class Part:
    headers: dict[str, str]  # names lower case
    body: memoryview  # a view into the received body: parts are not copied until used

    @property
    def content_type(self) -> str | None:
        return self.headers.get("content-type")


def _delimiter_at(body: bytes | bytearray, start: int, delimiter: bytes) -> int:
    """Where the next CRLF + delimiter that is a whole delimiter begins (its CRLF), or -1."""
    needle = _CRLF + delimiter
    while True:
        at = body.find(needle, start)
        if at < 0:
            return -1
        after = body[at + len(needle):at + len(needle) + 2]
        if after in (b"--", _CRLF) or after[:1] in (b" ", b"\t"):
            return at
        start = at + 1  # "--boundaryX" is not our delimiter


def _headers(raw: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in raw.decode("latin-1").split("\r\n"):
        if not line:
            continue
        name, colon, value = line.partition(":")
        if not colon or not name.strip():
            raise MultipartError(f"Malformed part header line {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    return headers


def split_related(body: bytes | bytearray, boundary: str) -> list[Part]:
    """The parts of a multipart body; MultipartError when the framing is broken or there are no parts."""
    if not boundary or len(boundary) > 70:
        raise MultipartError("The multipart boundary must be 1 to 70 characters")
    delimiter = b"--" + boundary.encode("latin-1")
    view = memoryview(body)
    if body.startswith(delimiter):
        position = 0
    else:  # a preamble comes before the first delimiter
        position = _delimiter_at(body, 0, delimiter)
        if position < 0:
            raise MultipartError(f"The body does not contain the boundary {boundary!r}")
        position += 2
    parts: list[Part] = []
    while True:
        position += len(delimiter)
        if body[position:position + 2] == b"--":
            break
        line_end = body.find(_CRLF, position)
        if line_end < 0 or body[position:line_end].strip(b" \t"):
            raise MultipartError("A boundary line is malformed")
        start = line_end + 2
        end = _delimiter_at(body, start - 2, delimiter)  # from the line's CRLF: a part may be empty
        if end < 0:
            raise MultipartError("The multipart body ends without its closing boundary")
        head_end = body.find(_CRLF * 2, start - 2, end + 2)
        if head_end < 0:
            raise MultipartError("A part has no blank line after its headers")
        parts.append(Part(_headers(bytes(body[start:head_end])), view[head_end + 4:end]))
        position = end + 2
    if not parts:
        raise MultipartError("The multipart body has no parts")
    return parts


def new_boundary() -> str:
    return uuid.uuid4().hex


def related_content_type(part_type: str, boundary: str) -> str:
    return f'multipart/related; type="{part_type}"; boundary={boundary}'


def part(boundary: str, content_type: str, body: bytes) -> bytes:
    """One part with its opening delimiter; `closing` ends the body."""
    return b"".join((b"--", boundary.encode(), _CRLF, b"Content-Type: ", content_type.encode(), _CRLF, _CRLF,
                     body, _CRLF))


def closing(boundary: str) -> bytes:
    return b"--" + boundary.encode() + b"--" + _CRLF
