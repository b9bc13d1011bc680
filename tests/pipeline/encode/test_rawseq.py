"""The raw sequence encoder writes what pydicom writes (re-read datasets compare equal)."""

from __future__ import annotations

import io

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from pipeline.encode.rawseq import freeze_sequence, mark_explicit_little
from pipeline.encode.seg import encode_seg
from pipeline.encode.sr import encode_sr


def _nested() -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    inner = Dataset()
    inner.CodeValue, inner.CodingSchemeDesignator, inner.CodeMeaning = "1", "99X", "Genou gauche é"
    item = Dataset()
    item.ReferencedSegmentNumber = 3  # US
    item.DimensionIndexValues = [1, 2]  # UL multi
    item.ImagePositionPatient = ["-1.5", "0", "2.25"]  # DS multi, odd length
    item.ReferencedSOPInstanceUID = "1.2.3"  # odd UI
    item.FloatingPointValue = 1.0 / 3.0  # FD
    item.TextValue = "a text"  # UT
    item.PersonName = "Müller^Anna"  # PN, not ASCII: pydicom fallback
    item.ConceptNameCodeSequence = [inner]
    item.ContentSequence = []  # empty sequence
    ds.ContentSequence = [item, Dataset()]
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def _roundtrip(ds: Dataset) -> Dataset:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    buf.seek(0)
    return pydicom.dcmread(buf)


def test_raw_equals_pydicom_encoding():
    plain = _nested()
    frozen = _nested()
    frozen.SOPInstanceUID = plain.SOPInstanceUID
    frozen.file_meta.MediaStorageSOPInstanceUID = plain.SOPInstanceUID
    freeze_sequence(frozen, "ContentSequence")
    mark_explicit_little(frozen)
    assert frozen.get_item("ContentSequence").is_raw
    assert _roundtrip(frozen) == _roundtrip(plain)


def test_seg_and_sr_items_reread_equal(series, labels, results, card):
    seg = encode_seg(source=series, labels=labels, model=card)
    sr = encode_sr(source=series, seg=seg, results=results, model=card)
    for ds, keyword in ((seg, "PerFrameFunctionalGroupsSequence"), (sr, "ContentSequence")):
        fast = _roundtrip(ds)
        slow = Dataset(dict(ds.items()))
        slow[keyword] = ds[keyword]  # parsed back into datasets: written by pydicom itself
        slow.file_meta = ds.file_meta
        assert not slow.get_item(keyword).is_raw
        assert fast[keyword].value == _roundtrip(slow)[keyword].value
