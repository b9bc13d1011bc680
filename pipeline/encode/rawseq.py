"""Fast explicit-VR little-endian encoding of sequences, stored as raw elements.

Why: pydicom's writer costs about 2 ms per sequence item. A SEG has one per-frame item per
segment and slice (1440 for 9 segments x 160 slices) and a TID 1500 SR about a thousand content
items, so writing them with pydicom took 0.4-1.7 s. This encoder handles the value
representations those items use (sequences, UIDs, codes, strings, numbers) and falls back to
pydicom for anything else, including text that is not ASCII. The result is stored as a
:class:`~pydicom.dataelem.RawDataElement`: pydicom writes it as is when the dataset's original
encoding is explicit VR little endian (:func:`mark_explicit_little`), and parses it lazily when
someone reads the element.
"""

from __future__ import annotations

import struct

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag

_LONG_VRS = frozenset(
    {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
)
_NUMERIC = {"US": "H", "UL": "I", "SS": "h", "SL": "i", "FL": "f", "FD": "d"}
_TEXT = frozenset({"UI", "CS", "SH", "LO", "DS", "IS", "DA", "TM", "DT", "AE", "LT", "ST", "UT"})


def encode_element(elem: DataElement, encodings: str | list[str] | None = None) -> bytes:
    """One element, explicit VR little endian (sequences recursively, items of defined length)."""
    vr, value = elem.VR, elem.value
    if vr == "SQ":
        body = b"".join(encode_item(item, encodings) for item in value)
    elif value is None or value == "":
        body = b""
    elif vr in _NUMERIC:
        vals = value if isinstance(value, (list, MultiValue)) else [value]
        body = struct.pack(f"<{len(vals)}{_NUMERIC[vr]}", *vals)
    elif vr in _TEXT:
        text = "\\".join(str(v) for v in value) if isinstance(value, MultiValue) else str(value)
        if not text.isascii():
            return _pydicom_bytes(elem, encodings)
        body = text.encode("ascii")
        if len(body) % 2:
            body += b"\x00" if vr == "UI" else b" "
    else:
        return _pydicom_bytes(elem, encodings)
    head = struct.pack("<HH", elem.tag.group, elem.tag.element) + vr.encode("ascii")
    if vr in _LONG_VRS:
        return head + struct.pack("<HI", 0, len(body)) + body
    return head + struct.pack("<H", len(body)) + body


def encode_item(item: Dataset, encodings: str | list[str] | None = None) -> bytes:
    """One sequence item (defined length) with its elements in tag order."""
    body = b"".join(encode_element(item[tag], encodings) for tag in sorted(item.keys()))
    return struct.pack("<HHI", 0xFFFE, 0xE000, len(body)) + body


def raw_sequence(tag: BaseTag, items_bytes: bytes) -> RawDataElement:
    """A sequence element whose value is already encoded items."""
    return RawDataElement(tag, "SQ", len(items_bytes), items_bytes, 0, False, True)


def freeze_sequence(ds: Dataset, keyword: str) -> None:
    """Replace ``ds.<keyword>`` (a sequence) by its raw encoding (same content, fast to write)."""
    elem = ds[keyword]
    encodings = ds.get("SpecificCharacterSet")
    data = b"".join(encode_item(item, encodings) for item in elem.value)
    ds[elem.tag] = raw_sequence(elem.tag, data)  # type: ignore[assignment]


def mark_explicit_little(ds: Dataset) -> None:
    """Declare the dataset explicit VR little endian so pydicom writes raw elements unchanged."""
    ds.set_original_encoding(False, True, ds._character_set)


def _pydicom_bytes(elem: DataElement, encodings: str | list[str] | None) -> bytes:
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_data_element(buf, elem, encodings)
    return buf.getvalue()
