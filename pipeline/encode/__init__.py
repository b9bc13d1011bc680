"""Result encoders: DICOM SEG, TID 1500 SR, colour overlay series and Encapsulated PDF.

Each encoder is a keyword-only function that validates its input and returns pydicom datasets in
the source series' Study, with new Series and SOP Instance UIDs. :func:`encode_results` runs the
ones the ``encode`` settings enable; :func:`write_results` writes them for delivery.
"""

from pipeline.encode.bundle import EncodedResults, encode_results, write_results
from pipeline.encode.common import AlgorithmInfo
from pipeline.encode.overlay import encode_overlay
from pipeline.encode.pdf import encode_pdf, pdf_document
from pipeline.encode.seg import encode_seg, segment_numbers
from pipeline.encode.sr import encode_sr, read_sr_measurements

__all__ = [
    "AlgorithmInfo",
    "EncodedResults",
    "encode_overlay",
    "encode_pdf",
    "encode_results",
    "encode_seg",
    "encode_sr",
    "pdf_document",
    "read_sr_measurements",
    "segment_numbers",
    "write_results",
]
