"""Media types of DICOMweb: parsing Content-Type and Accept headers, and choosing what to answer with
(PS3.18 8.7: multipart/related with a part type and transfer syntax, or a single part)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..model.outcome import NotAcceptable

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
OCTET_STREAM = "application/octet-stream"
MULTIPART_RELATED = "multipart/related"

# The media type of a compressed frame in each encapsulated transfer syntax (PS3.18 Table 8.7.3-5).
_FRAME_TYPES = {
    "1.2.840.10008.1.2.4.50": "image/jpeg", "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg", "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls", "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2", "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx", "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc", "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
    "1.2.840.10008.1.2.4.100": "video/mpeg2", "1.2.840.10008.1.2.4.101": "video/mpeg2",
    **{f"1.2.840.10008.1.2.4.{n}": "video/mp4" for n in range(102, 109)},
}


def frame_media_type(transfer_syntax: str) -> str:
    return _FRAME_TYPES.get(transfer_syntax, OCTET_STREAM)


@dataclass(frozen=True)
class MediaType:
    type: str  # lower case, e.g. "multipart/related"
    params: dict[str, str] = field(default_factory=dict)  # names lower case, values unquoted
    quality: float = 1.0


def _split(text: str, separator: str) -> list[str]:
    """Split on `separator` outside double quotes."""
    pieces, current, quoted = [], [], False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char == separator and not quoted:
            pieces.append("".join(current))
            current = []
        else:
            current.append(char)
    pieces.append("".join(current))
    return pieces


def parse_media_type(value: str) -> MediaType:
    main, *rest = (piece.strip() for piece in _split(value, ";"))
    params, quality = {}, 1.0
    for piece in rest:
        name, _, param = piece.partition("=")
        name, param = name.strip().lower(), param.strip()
        if len(param) >= 2 and param[0] == param[-1] == '"':
            param = param[1:-1]
        if name == "q":
            try:
                quality = float(param)
            except ValueError:
                quality = 0.0
        elif name:
            params[name] = param
    return MediaType(main.lower(), params, quality)


def parse_accept(header: str | None) -> list[MediaType]:
    """The acceptable media ranges, best first (ties keep their order); no header accepts anything."""
    if not header or not header.strip():
        return [MediaType("*/*")]
    ranges = [parse_media_type(piece) for piece in _split(header, ",") if piece.strip()]
    return sorted((r for r in ranges if r.quality > 0 and r.type), key=lambda r: -r.quality)


def _covers(media_range: str, media_type: str) -> bool:
    if media_range in ("*/*", media_type):
        return True
    return media_range.endswith("/*") and media_type.startswith(media_range[:-1])


@dataclass(frozen=True)
class Offer:
    """A representation the server can send: the parts' media type, the transfer syntaxes the bytes are in,
    and whether a range naming the type without a transfer-syntax parameter asks for exactly this."""
    media_type: str
    transfer_syntaxes: frozenset[str]
    default: bool = True

    def syntax_fits(self, wanted: str | None) -> bool:
        if wanted is None:
            return self.default
        return wanted == "*" or self.transfer_syntaxes == {wanted}

    @property
    def transfer_syntax(self) -> str | None:
        return next(iter(self.transfer_syntaxes)) if len(self.transfer_syntaxes) == 1 else None


@dataclass(frozen=True)
class Choice:
    offer: Offer
    multipart: bool


def negotiate(accept: str | None, offers: list[Offer], *, single_part: bool = False) -> Choice:
    """The first offer (in the client's order of preference) an Accept range asks for. Multipart ranges
    are always considered; single-part ones only when the answer is one body. NotAcceptable otherwise."""
    for media_range in parse_accept(accept):
        if media_range.type in ("*/*", "multipart/*") or (
                media_range.type == MULTIPART_RELATED and "type" not in media_range.params):
            return Choice(offers[0], multipart=True)
        wanted_syntax = media_range.params.get("transfer-syntax")
        if media_range.type == MULTIPART_RELATED:
            part_type = media_range.params["type"].lower()
            for offer in offers:
                if _covers(part_type, offer.media_type) and offer.syntax_fits(wanted_syntax):
                    return Choice(offer, multipart=True)
        elif single_part:
            for offer in offers:
                if _covers(media_range.type, offer.media_type) and offer.syntax_fits(wanted_syntax):
                    return Choice(offer, multipart=False)
    available = "; ".join(f'{MULTIPART_RELATED}; type="{o.media_type}"; transfer-syntax='
                          f'{"|".join(sorted(o.transfer_syntaxes))}' for o in offers)
    raise NotAcceptable(f"Cannot answer Accept: {accept}; available: {available} (or transfer-syntax=*)")


def accepts_json(accept: str | None) -> None:
    """Raise NotAcceptable unless the Accept header allows DICOM JSON."""
    for media_range in parse_accept(accept):
        if media_range.type in (DICOM_JSON, "application/json", "application/*", "*/*"):
            return
    raise NotAcceptable(f"Cannot answer Accept: {accept}; this resource is {DICOM_JSON}")


def part_content_type(media_type: str, transfer_syntax: str | None) -> str:
    return f"{media_type}; transfer-syntax={transfer_syntax}" if transfer_syntax else media_type
