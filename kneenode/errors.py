"""One error family for the whole node: a code, a message and a recovery hint.

Codes come from the old web app (extended). Permanent codes are never retried; transient ones are
retried with a delay by the jobs layer. Errors are values at the edges: the SCP turns them into
DICOM statuses, the jobs layer into job states.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """Job and pipeline error codes (see DESIGN.md)."""

    TIMEOUT = "TIMEOUT"
    GPU_OOM = "GPU_OOM"
    FILE_NOT_FOUND = "FILE_NOT_FOUND"
    INVALID_FORMAT = "INVALID_FORMAT"
    DICOM_ERROR = "DICOM_ERROR"
    SEGMENTATION_FAILED = "SEGMENTATION_FAILED"
    NSM_FAILED = "NSM_FAILED"
    CONFIG_ERROR = "CONFIG_ERROR"
    PIPELINE_ERROR = "PIPELINE_ERROR"
    NOT_KNEE = "NOT_KNEE"
    NOT_SELECTED = "NOT_SELECTED"
    SEND_FAILED = "SEND_FAILED"
    NOT_AN_IMAGE = "NOT_AN_IMAGE"
    BLANK_IMAGE = "BLANK_IMAGE"
    OUTPUT_MISSING = "OUTPUT_MISSING"
    QC_FAILED = "QC_FAILED"
    UPLOAD_TOO_LARGE = "UPLOAD_TOO_LARGE"
    UPLOAD_UNSAFE_PATH = "UPLOAD_UNSAFE_PATH"
    UPLOAD_BOMB = "UPLOAD_BOMB"
    UPLOAD_TOO_MANY_FILES = "UPLOAD_TOO_MANY_FILES"
    UPLOAD_NOT_DICOM = "UPLOAD_NOT_DICOM"
    UPLOAD_MANY_SERIES = "UPLOAD_MANY_SERIES"
    UPLOAD_NO_SPACE = "UPLOAD_NO_SPACE"
    UNKNOWN_PROFILE = "UNKNOWN_PROFILE"
    HISTORY_UNAVAILABLE = "HISTORY_UNAVAILABLE"


HINTS: dict[ErrorCode, str] = {
    ErrorCode.TIMEOUT: "The stage ran past its time limit; check the worker's load or raise the "
    "stage time limit, then `kneenode retry ID`.",
    ErrorCode.GPU_OOM: "The GPU ran out of memory; lower the tile batch size or use a larger GPU, "
    "then retry.",
    ErrorCode.FILE_NOT_FOUND: "A file of the job is missing; check that the spool and job folders "
    "are on shared storage for all workers.",
    ErrorCode.INVALID_FORMAT: "The series is not a usable 3-D volume; resend a complete series "
    "with consistent geometry.",
    ErrorCode.DICOM_ERROR: "A DICOM file could not be read or written; check the sender's "
    "transfer syntax and the file.",
    ErrorCode.SEGMENTATION_FAILED: "The segmentation model failed on this series; check the model "
    "folder and the input contrast.",
    ErrorCode.NSM_FAILED: "The shape model fit failed; the other results are still valid.",
    ErrorCode.CONFIG_ERROR: "The node's configuration is invalid for this job; fix kneenode.toml "
    "and retry.",
    ErrorCode.PIPELINE_ERROR: "An unexpected error; see the job events and logs, then retry.",
    ErrorCode.NOT_KNEE: "The series does not look like a knee MRI; adjust the selection rules if "
    "it should be processed.",
    ErrorCode.NOT_SELECTED: "The series did not match the selection rules (see the reason).",
    ErrorCode.SEND_FAILED: "The destination did not accept the results; check it is up, then "
    "`kneenode retry ID --from-stage deliver`.",
    ErrorCode.NOT_AN_IMAGE: "The series holds non-image objects (SR, SEG, presentation states, "
    "key objects, documents); send or choose the MR image series they belong to.",
    ErrorCode.BLANK_IMAGE: "Every voxel of the volume has the same value (a blank or failed "
    "acquisition); check the series on the scanner or PACS and resend it.",
    ErrorCode.OUTPUT_MISSING: "A result object the settings ask for was not written or does not "
    "re-read; nothing was delivered. Check the encode stage's events and disk space, then "
    "`kneenode retry ID --from-stage encode`.",
    ErrorCode.QC_FAILED: "The segmentation failed quality control (see the reasons: input the "
    "model was not made for, a cut field of view, another contrast); review it, then "
    "`kneenode release ID` to deliver it flagged or `kneenode discard ID` to deliver nothing.",
    ErrorCode.UPLOAD_TOO_LARGE: "The upload (or one DICOM file in it) is over the limit "
    "(`upload.max_bytes`, `scp.max_instance_bytes`); nothing was kept. Upload fewer files, or "
    "raise the limit.",
    ErrorCode.UPLOAD_UNSAFE_PATH: "The zip holds a member with an unsafe name (`..`, an absolute "
    "path) or a symbolic link; nothing was kept. Zip the series' folder again without links.",
    ErrorCode.UPLOAD_BOMB: "The zip inflates to far more than its size (`upload.max_ratio`, "
    "`upload.max_unpacked_bytes`): refused as a zip bomb, nothing was kept. Zip the series "
    "itself, or raise the limits for genuinely compressible data.",
    ErrorCode.UPLOAD_TOO_MANY_FILES: "The upload has more files than `upload.max_members`; "
    "nothing was kept. Upload one series, or raise the limit.",
    ErrorCode.UPLOAD_NOT_DICOM: "The upload is not a DICOM series (a zip of DICOM files, the "
    "files themselves, or one NIfTI / NRRD volume); nothing was kept. Check what was chosen.",
    ErrorCode.UPLOAD_MANY_SERIES: "One upload is one series (one job, one profile); nothing was "
    "kept. Upload the knee series' own folder, or send the whole study by C-STORE, where each "
    "series becomes its own job.",
    ErrorCode.UPLOAD_NO_SPACE: "The spool is below its free-space watermark "
    "(`spool.min_free_bytes`, `spool.min_free_percent`); nothing was kept. Free disk space, then "
    "upload again.",
    ErrorCode.UNKNOWN_PROFILE: "No such processing profile; choose one of the profiles the error "
    "lists (`default` or a `[profiles.<name>]` of kneenode.toml).",
    ErrorCode.HISTORY_UNAVAILABLE: "The results history database could not be opened or "
    "written (the results were delivered); check `history.url`, the database server and its "
    "password file, then `kneenode retry ID --from-stage history`.",
}

PERMANENT: frozenset[ErrorCode] = frozenset(
    {
        ErrorCode.TIMEOUT,  # a stage that hit its limit would likely hit it again: retry by hand
        ErrorCode.INVALID_FORMAT,
        ErrorCode.NOT_KNEE,
        ErrorCode.NOT_SELECTED,
        ErrorCode.CONFIG_ERROR,
        ErrorCode.DICOM_ERROR,
        ErrorCode.SEGMENTATION_FAILED,
        ErrorCode.NSM_FAILED,
        ErrorCode.NOT_AN_IMAGE,
        ErrorCode.BLANK_IMAGE,
        ErrorCode.OUTPUT_MISSING,  # re-encoding is a deliberate retry from encode
        ErrorCode.QC_FAILED,
        ErrorCode.UPLOAD_TOO_LARGE,
        ErrorCode.UPLOAD_UNSAFE_PATH,
        ErrorCode.UPLOAD_BOMB,
        ErrorCode.UPLOAD_TOO_MANY_FILES,
        ErrorCode.UPLOAD_NOT_DICOM,
        ErrorCode.UPLOAD_MANY_SERIES,
        ErrorCode.UNKNOWN_PROFILE,
    }
)


class NodeError(Exception):
    """An error with a code, a message and a recovery hint.

    Parameters
    ----------
    code
        One of :class:`ErrorCode`.
    message
        What went wrong, specific to this case (never patient names or IDs).
    hint
        What the operator can do; defaults to the code's standard hint.
    retryable
        Whether the jobs layer should retry; defaults to ``code not in PERMANENT``.
    """

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        hint: str | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = ErrorCode(code)
        self.message = message
        self.hint = hint if hint is not None else HINTS[self.code]
        self.retryable = retryable if retryable is not None else self.code not in PERMANENT

    def as_dict(self) -> dict[str, object]:
        """The error as stored in a job record."""
        return {
            "code": str(self.code),
            "message": self.message,
            "hint": self.hint,
            "retryable": self.retryable,
        }
