"""One typed settings tree for the whole node.

Every default lives here, with a description per field. Values come from, in order of precedence:
``KNEENODE_*`` environment variables (nested with ``__``, e.g. ``KNEENODE_SCP__PORT=4242``), the
TOML file named by ``--config`` / ``KNEENODE_CONFIG``, then these defaults. An invalid value stops
the node with one message naming the key (:func:`load_settings` raises :class:`SettingsError`).
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

CONFIG_ENV = "KNEENODE_CONFIG"


class Section(BaseModel):
    """Base of every settings section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TlsSettings(Section):
    """DICOM TLS for the SCP (and the SCU when a destination asks for it)."""

    enabled: bool = Field(default=False, description="Serve DICOM over TLS instead of plain TCP.")
    cert: Path | None = Field(default=None, description="PEM certificate of this node.")
    key: Path | None = Field(default=None, description="PEM private key of this node.")
    ca: Path | None = Field(default=None, description="PEM CA bundle used to verify peers.")
    require_client_cert: bool = Field(
        default=False, description="Reject peers that present no certificate signed by `ca`."
    )


class ScpSettings(Section):
    """The Storage SCP: who may send, and how the network edge behaves."""

    ae_title: str = Field(
        default="KNEENODE",
        description="AE title this node answers to; every `called_ae` named by a route is "
        "answered too (one virtual AE per route).",
    )
    host: str = Field(default="0.0.0.0", description="Address the SCP listens on.")
    port: int = Field(default=11112, ge=0, le=65535, description="TCP port of the SCP (0 = any free port).")
    require_called_ae: bool = Field(
        default=False,
        description="Reject associations whose called AE title is neither `ae_title` nor a "
        "`called_ae` of a route.",
    )
    allow_any: bool = Field(
        default=False,
        description="Accept any calling AE from any address (demos only; hospitals list their "
        "peers in [[routes]]).",
    )
    allow_loopback: bool = Field(
        default=True,
        description="Accept any calling AE connecting from this machine (127.0.0.0/8, ::1), "
        "so a local storescu or `kneenode send` works out of the box.",
    )
    max_associations: int = Field(
        default=8, ge=1,
        description="Concurrent associations (past their A-ASSOCIATE-RQ); one more is rejected "
        "at once (A-ASSOCIATE-RJ, transient, local limit exceeded). Connections still "
        "negotiating do not take a slot.",
    )
    max_associations_per_address: int = Field(
        default=4, ge=1,
        description="Concurrent associations from one IP address (rejected like max_associations), "
        "so one peer cannot take every slot.",
    )
    max_pending_connections: int = Field(
        default=64, ge=1,
        description="Connections that have not yet sent a complete A-ASSOCIATE-RQ, in all; one "
        "more is answered A-ASSOCIATE-RJ (transient) and closed.",
    )
    max_pending_per_address: int = Field(
        default=32, ge=1, description="The same limit for connections from one IP address."
    )
    negotiation_timeout: float = Field(
        default=10, gt=0,
        description="From TCP connect to a complete A-ASSOCIATE-RQ (s); a connection slower than "
        "this, silent or sending part of a PDU, is aborted and closed.",
    )
    pdu_timeout: float = Field(
        default=30, gt=0,
        description="From the first to the last byte of one PDU (s), and the longest a send may "
        "block; a peer slower than this is aborted (A-ABORT).",
    )
    acse_timeout: float = Field(default=30, gt=0, description="Association negotiation timeout (s).")
    dimse_timeout: float = Field(default=60, gt=0, description="DIMSE message timeout (s).")
    network_timeout: float = Field(
        default=30, gt=0, description="An association with no PDU for this long is aborted (s)."
    )
    max_pdu: int = Field(default=262144, ge=0, description="Maximum PDU length we receive (0 = unlimited).")
    max_declared_pdu: int = Field(
        default=4 * 1024**2, ge=1024,
        description="Largest PDU length a peer may declare (bytes, any PDU type); a larger one is "
        "aborted (A-ABORT, invalid PDU parameter value) before its body is read, so memory "
        "stays bounded even with max_pdu = 0.",
    )
    max_instance_bytes: int = Field(
        default=2 * 1024**3, ge=1024,
        description="Largest instance accepted (bytes of the encoded data set; for Deflated "
        "Explicit VR Little Endian, after inflation); a larger one is answered 0xA702 and "
        "nothing of it is kept.",
    )
    tls: TlsSettings = Field(default_factory=TlsSettings, description="DICOM TLS.")

    @field_validator("ae_title")
    @classmethod
    def _ae_title(cls, v: str) -> str:
        return _check_ae(v)

    @model_validator(mode="after")
    def _pdu_bounds(self) -> ScpSettings:
        if self.max_pdu and self.max_declared_pdu < self.max_pdu:
            raise ValueError("max_declared_pdu must be at least max_pdu (peers may send PDUs "
                             "of the length we announce)")
        return self


class SpoolSettings(Section):
    """The durable spool where every received instance is written before it is acknowledged."""

    min_free_bytes: int = Field(
        default=5 * 1024**3, ge=0, description="Refuse new instances (0xA700) below this free space."
    )
    min_free_percent: float = Field(
        default=5.0, ge=0, le=100, description="Refuse new instances below this free percentage."
    )
    fsync: bool = Field(default=True, description="fsync each instance before answering Success.")
    tmp_sweep_seconds: float = Field(
        default=60, gt=0,
        description="How often spool/tmp is swept of orphan temp files (receives that ended "
        "without an answer); files a live association is still writing are never touched.",
    )
    tmp_grace_seconds: float = Field(
        default=60, ge=0,
        description="A temp file no live association owns is removed once it is this old (s).",
    )


class UploadSettings(Section):
    """Series uploaded through the web console or ``kneenode upload`` (docs/upload.md)."""

    max_bytes: int = Field(
        default=4 * 1024**3, ge=1024,
        description="Largest upload (bytes as sent, all files together); a larger one is refused "
        "(UPLOAD_TOO_LARGE) while it is read and nothing of it is kept.",
    )
    max_unpacked_bytes: int = Field(
        default=8 * 1024**3, ge=1024,
        description="Most bytes the members of an uploaded zip may inflate to, counted while "
        "inflating (zip headers are not trusted); more is refused as a zip bomb (UPLOAD_BOMB).",
    )
    max_members: int = Field(
        default=20000, ge=1,
        description="Most files in one upload (zip members, or uploaded files); more is refused "
        "(UPLOAD_TOO_MANY_FILES).",
    )
    max_ratio: float = Field(
        default=200.0, gt=1,
        description="Highest compression ratio of a zip member (inflated / compressed bytes, "
        "counted while inflating, for members over 1 MiB inflated); above it the upload is "
        "refused as a zip bomb (UPLOAD_BOMB). DICOM images compress 2-10x, blank ones ~100x.",
    )
    default_patient_name: str = Field(
        default="ANONYMOUS^UPLOAD",
        description="Patient Name of a series converted from a NIfTI / NRRD upload when the "
        "uploader gives none.",
    )
    default_body_part: str = Field(
        default="KNEE",
        description="Body Part Examined of a series converted from a NIfTI / NRRD upload when the "
        "uploader gives none (the selection rules look for a knee keyword).",
    )


class CompletionSettings(Section):
    """When a series counts as complete."""

    quiet_seconds: float = Field(
        default=20, gt=0, description="A series is complete after this long with no new instance."
    )
    poll_seconds: float = Field(
        default=1.0, gt=0, description="How often the completion monitor looks for quiet series."
    )
    policy: Literal["auto", "timer"] = Field(
        default="auto",
        description="auto: when an association ends, complete each series it carried at once if "
        "provably whole (expected count met, or gap-free stack and the peer quiet for "
        "release_grace_seconds), else fall back to the quiet timer; timer: the quiet timer only.",
    )
    release_grace_seconds: float = Field(
        default=1.5, ge=0,
        description="auto without an expected count: close a gap-free stack only if its peer opens "
        "no new association this long after the release (senders using one association per file).",
    )


class ReaderSettings(Section):
    """Series reader tolerances and minimum sizes (docs/series.md); also the SCP summary's check.

    Real scanners write Image Position rounded (GE: to 0.1 mm) and with a little slice-to-slice
    jitter; a missing slice is a gap of about twice the spacing. The tolerances accept the first
    and still refuse the second.
    """

    min_slices: int = Field(default=8, ge=2, description="Fewer slices than this cannot be "
                            "segmented as 3-D (per echo).")
    min_matrix: int = Field(default=16, ge=1, description="Rows and columns must be at least this.")
    orientation_tolerance: float = Field(
        default=1e-4, gt=0, description="Largest difference of direction cosines between frames."
    )
    echo_time_decimals: int = Field(
        default=2, ge=0, description="Echo times are grouped after rounding to this many ms decimals."
    )
    position_precision_mm: float = Field(
        default=0.1, ge=0,
        description="Precision scanners write ImagePositionPatient with (GE rounds to 0.1 mm): two "
        "rounded positions may be off by sqrt(3) x this, in-plane and along the normal.",
    )
    inplane_tolerance: float = Field(
        default=0.01, ge=0,
        description="Slices may drift in-plane by this fraction of the pixel spacing (or by the "
        "position rounding, whichever is larger); beyond it: 'not stacked along their normal'.",
    )
    spacing_tolerance: float = Field(
        default=0.1, ge=0, lt=0.5,
        description="A slice gap may differ from the median gap by this fraction of it (or by the "
        "position rounding, whichever is larger, at most 40 %); such a series is resampled onto a "
        "uniform grid with a warning. Larger gaps are refused (missing slices, uneven spacing).",
    )
    uniform_tolerance_mm: float = Field(
        default=0.01, ge=0,
        description="Slices within this distance of a uniform grid are read as they are; farther "
        "off, the volume is resampled along the normal and the job records a warning.",
    )

    @property
    def rounding_allowance_mm(self) -> float:
        """How far apart two positions written to ``position_precision_mm`` can be from the truth."""
        return 3 ** 0.5 * self.position_precision_mm

    def gap_tolerance_mm(self, spacing: float) -> float:
        """Largest accepted deviation of one slice gap from the median ``spacing`` (mm).

        It scales with the spacing, never falls below the rounding allowance and never reaches
        half the spacing, so a missing slice (a gap of twice the spacing) always shows.
        """
        spacing = abs(spacing)
        return min(max(self.spacing_tolerance * spacing, self.rounding_allowance_mm), 0.4 * spacing)

    def inplane_tolerance_mm(self, pixel_spacing: float) -> float:
        """Largest accepted in-plane drift of a slice from the first one (mm)."""
        return max(self.inplane_tolerance * pixel_spacing, self.rounding_allowance_mm, 1e-3)


#: nnU-Net v2's configuration names (the last part of a trained-model folder's name).
NNUNET_CONFIGURATIONS = ("2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres")


def configuration_in_name(folder: Path | str) -> str | None:
    """The configuration a trained-model folder's name ``<trainer>__<plans>__<configuration>``
    states; None for any other name (a dataset folder)."""
    parts = Path(folder).name.split("__")
    return parts[2] if len(parts) == 3 and parts[2] in NNUNET_CONFIGURATIONS else None


DEMO_MODEL_DIR = (
    Path(__file__).resolve().parent.parent
    / "models"
    / "phantom_demo"
    / "Dataset990_KneePhantomDemo"
    / "nnUNetTrainer__nnUNetResEncUNetPhantomDemoPlans__3d_cascade_fullres"
)


class SegmentSettings(Section):
    """The nnU-Net v2 segmentation model (see docs/segmentation.md)."""

    model_dir: Path = Field(
        default=DEMO_MODEL_DIR,
        description="nnU-Net v2 trained-model folder (dataset.json, plans.json, fold_N/), or its "
        "dataset folder (then trainer/plans/configuration name the subfolder). Default: the "
        "committed PHANTOM DEMO model, not for clinical use.",
    )
    trainer: str = Field(default="nnUNetTrainer", description="Trainer name in the folder name.")
    plans: str = Field(default="nnUNetResEncUNetMPlans", description="Plans name in the folder name.")
    configuration: str = Field(
        default="auto",
        description="3d_fullres, 3d_lowres or 3d_cascade_fullres (runs its 3d_lowres stage "
        "first); auto = the configuration in model_dir's folder name "
        "(<trainer>__<plans>__<configuration>), else 3d_fullres.",
    )
    lowres_model_dir: str = Field(
        default="",
        description="Trained-model folder of the 3d_lowres stage of a cascade; empty = the sibling "
        "folder <trainer>__<plans>__3d_lowres.",
    )
    folds: list[str] = Field(
        default_factory=list,
        description="Folds to ensemble (e.g. [\"0\", \"1\"] or [\"all\"]); empty = every fold_N "
        "folder that holds the checkpoint.",
    )
    checkpoint: str = Field(
        default="checkpoint_final.pth",
        description="Checkpoint file in each fold folder (the old pipeline used checkpoint_best.pth).",
    )
    tta: bool = Field(
        default=False,
        description="Mirroring test-time augmentation over the checkpoint's allowed axes "
        "(up to 8 flips in 3-D).",
    )
    tile_step_size: float = Field(
        default=0.5, gt=0, le=1, description="Sliding-window step as a fraction of the patch size."
    )
    tile_batch_size: int = Field(default=4, ge=1, description="Tiles per network forward pass.")
    cpu_threads: int = Field(
        default=0,
        ge=0,
        description="torch threads while predicting on the CPU; 0 = torch's default. 1 is "
        "fastest when several workers share the cores (no OpenMP spin-waiting).",
    )
    device: str = Field(default="auto", description="auto (cuda when available), cpu, cuda or cuda:N.")
    mixed_precision: bool = Field(
        default=True, description="fp16 autocast on CUDA (ignored on CPU, where it is slower)."
    )
    postprocess: bool = Field(
        default=True,
        description="Per structure keep the largest connected component (and pieces >= 20 % of "
        "its size, e.g. a meniscus split by the voxel grid); fill holes in bones.",
    )
    allow_pickle: bool = Field(
        default=False,
        description="Load checkpoints that the weights-only unpickler refuses (runs pickled code: "
        "only for model folders you trust).",
    )

    @property
    def resolved_configuration(self) -> str:
        """The nnU-Net configuration to run: ``configuration``, with ``auto`` resolved.

        ``auto`` reads the folder name, so a model folder that is itself one stage of a cascade
        (the phantom demo's ``..._3d_cascade_fullres``) runs as what it was trained for.
        """
        if self.configuration != "auto":
            return self.configuration
        return configuration_in_name(self.model_dir) or "3d_fullres"


DEFAULT_KNEE_PATTERN = (
    r"(?<![a-z])(knee|knie|genou|rodilla|ginocchio|joelho|kolano|kn[äa]|polvi|polv|koleno|"
    r"q?dess|cube|space|pd[ _-]*3d|3d[ _-]*pd)(?![a-z])"
)


class SelectionSettings(Section):
    """Which complete series become analysis jobs; the rest are recorded as ignored."""

    modalities: list[str] = Field(default_factory=lambda: ["MR"], description="Accepted modalities.")
    min_slices: int = Field(
        default=20, ge=1, description="A non-3-D series needs at least this many slices."
    )
    require_consistent_geometry: bool = Field(
        default=True, description="Ignore series whose slice geometry is inconsistent."
    )
    pattern: str = Field(
        default=DEFAULT_KNEE_PATTERN,
        description="Regex (case-insensitive) searched in series description, protocol name and "
        "body part: knee in several languages and knee sequence names (DESS, qDESS, CUBE, SPACE, "
        "PD 3D).",
    )


class JobsSettings(Section):
    """The job system: broker (redis), workers, time limits, retries, status server."""

    redis_url: str | None = Field(
        default=None,
        description="External redis (e.g. redis://host:6379/0) shared by several hosts; unset = "
        "`kneenode serve` starts a private redis-server child under data_dir/redis.",
    )
    redis_port: int = Field(
        default=0, ge=0, le=65535, description="Port of the embedded redis (0 = a free port)."
    )
    redis_server: str = Field(default="redis-server", description="redis-server executable.")
    redis_appendfsync: Literal["always", "everysec"] = Field(
        default="always",
        description="AOF fsync policy of the embedded redis: `always` = a job-store write is on "
        "disk before redis answers (no acknowledged hand-off or stage lost on power failure); "
        "`everysec` = up to one second of writes lost on power failure, slightly faster. An "
        "external redis should run with `appendfsync always` for the same guarantee.",
    )
    redis_retry_s: float = Field(
        default=30, ge=0,
        description="How long a job-store or broker call keeps retrying a lost redis connection "
        "(exponential backoff up to 1 s) before the error reaches the stage's bookkeeping.",
    )
    reconcile_interval_s: float = Field(
        default=30, gt=0,
        description="How often `serve` / `scp` (with jobs) look for complete series without a "
        "job and for queued or running jobs whose stage message is gone, and re-send them.",
    )
    reconcile_grace_s: float = Field(
        default=30, ge=0,
        description="A job is only re-sent when its record has not changed for this long "
        "(a message in flight between two stages is not stranded).",
    )
    namespace: str = Field(default="kneenode", description="Prefix of every redis key.")
    chain: str = Field(
        default="workers.analysis:node_chain",
        description="module:function returning the stage list (name, queue, function).",
    )
    optional_stages: list[str] = Field(
        default_factory=lambda: ["shape"],
        description="Optional stages to run (an optional stage not listed here is skipped).",
    )
    stage_time_limit_s: float = Field(
        default=1800, gt=0, description="Time limit of one stage attempt (s); past it: TIMEOUT."
    )
    stage_time_limits: dict[str, float] = Field(
        default_factory=dict, description="Per-stage time limits (s), e.g. {segment = 3600}."
    )
    watchdog_grace_s: float = Field(
        default=30, ge=0, description="A stage still running this long past its limit has its "
        "worker process killed and restarted (native code ignores the in-thread limit).",
    )
    max_retries: int = Field(default=5, ge=0, description="Retries of a transient error per stage.")
    retry_min_backoff_s: float = Field(default=5, gt=0, description="First retry delay (s).")
    retry_max_backoff_s: float = Field(default=600, gt=0, description="Longest retry delay (s).")
    heartbeat_timeout_s: float = Field(
        default=60, gt=0, description="A worker silent this long is dead; its messages requeue."
    )
    maintenance_chance: int = Field(
        default=1000, ge=0, le=1000000,
        description="Per million broker calls: how often dead-worker maintenance runs.",
    )
    poll_ms: int = Field(
        default=500, ge=1, description="Longest wait of an idle consumer (ms); enqueues wake it "
        "at once, so this only bounds recovery from a lost wake-up and delayed-retry precision.",
    )
    cpu_processes: int = Field(default=1, ge=0, description="`serve`: worker processes, cpu queue.")
    cpu_threads: int = Field(default=2, ge=1, description="Threads per cpu worker process.")
    io_processes: int = Field(default=1, ge=0, description="`serve`: worker processes, io queue.")
    io_threads: int = Field(default=4, ge=1, description="Threads per io worker process.")
    gpu_devices: list[str] = Field(
        default_factory=lambda: ["auto"],
        description="`serve`: one gpu-queue process (one job at a time) per entry: auto, cpu, "
        "cuda:N.",
    )
    shutdown_grace_s: float = Field(
        default=10, ge=0, description="On SIGTERM, wait this long for running stages, then "
        "requeue them.",
    )
    http_enabled: bool = Field(default=True, description="`serve` runs the HTTP status server.")
    http_host: str = Field(default="127.0.0.1", description="Address of the HTTP status server.")
    http_port: int = Field(default=8642, ge=0, le=65535, description="Port of the status server.")
    selection: SelectionSettings = Field(
        default_factory=SelectionSettings, description="Series selection rules."
    )
    warm_models: int = Field(
        default=2, ge=1,
        description="Models each worker process keeps loaded per kind (segmentation, NSM), one "
        "per model folder, least recently used dropped first: two profiles with two models run "
        "without reloading per job.",
    )
    gpu_headroom_mb: int = Field(
        default=2048, ge=0,
        description="On a GPU, drop least recently used warm models before loading another one "
        "until this much GPU memory is free.",
    )


class EncodeSettings(Section):
    """Result DICOM objects (SEG, SR, overlay series, PDF): which ones, and how (docs/encode.md)."""

    seg: bool = Field(default=True, description="Produce the DICOM SEG (BINARY, one segment per tissue).")
    sr: bool = Field(default=True, description="Produce the TID 1500 Comprehensive 3D SR.")
    overlay: bool = Field(
        default=True, description="Produce the colour overlay series (for PACS without SEG support)."
    )
    pdf: bool = Field(default=True, description="Produce the Encapsulated PDF report.")
    seg_keep_empty_frames: bool = Field(
        default=True,
        description="Keep empty frames in the SEG (one frame per segment and source slice): some "
        "viewers misplace sparse SEGs.",
    )
    seg_subregions: bool = Field(
        default=False, description="Add the five femoral cartilage subregions (labels 11-15) as segments."
    )
    series_number_base: int | None = Field(
        default=None,
        ge=0,
        description="Result series numbers are base + 1 (SEG), 2 (SR), 3 (overlay), 4 (PDF); "
        "unset = source series number x 100.",
    )
    description_prefix: str = Field(
        default="KneeNode", max_length=24, description="Start of every result Series Description."
    )
    uid_prefix: str | None = Field(
        default=None,
        pattern=r"^([0-9]+\.)+$",
        description="UID root for new Series/SOP UIDs (ends with a dot); unset = pydicom's root.",
    )
    manufacturer: str = Field(default="kneenode", description="Manufacturer written into results.")
    device_serial_number: str = Field(default="0", description="Device Serial Number of this node.")
    overlay_alpha: float = Field(
        default=0.45, ge=0, le=1, description="Opacity of the label colours in the overlay series."
    )
    overlay_outline: bool = Field(
        default=True, description="Draw label outlines opaque on top of the translucent fill."
    )
    overlay_jpeg_quality: int | None = Field(
        default=None,
        ge=50,
        le=100,
        description="Store overlay images as JPEG Baseline (lossy, about 10x smaller) at this "
        "quality; unset = uncompressed RGB, which every PACS accepts. Set it only for "
        "destinations that accept JPEG Baseline.",
    )
    pdf_key_slices: int = Field(default=3, ge=1, le=6, description="Key slices shown in the PDF report.")
    report_images: bool = Field(
        default=True,
        description="Also write the report's key-slice overlays and thickness maps as PNG files "
        "(encode/images/, for the web console), drawn by the PDF's own code; also without the PDF.",
    )
    sr_source_images: bool = Field(
        default=False,
        description="In each SR measurement group, also list the source slices of its segment "
        "(IMAGE items); the SR grows. Not needed for OHIF: the outlines on key slices (always "
        "written) are what it needs (docs/viewer.md).",
    )


class DestinationSettings(Section):
    """A DICOM peer results are sent to (C-STORE)."""

    ae_title: str = Field(description="Called AE title of the destination.")
    host: str = Field(description="Host name or address of the destination.")
    port: int = Field(ge=1, le=65535, description="Port of the destination.")
    tls: bool = Field(default=False, description="Use DICOM TLS for this destination.")
    ca: Path | None = Field(default=None, description="PEM CA bundle to verify it (TLS).")
    cert: Path | None = Field(default=None, description="Our client certificate (TLS).")
    key: Path | None = Field(default=None, description="Our client private key (TLS).")

    @field_validator("ae_title")
    @classmethod
    def _ae_title(cls, v: str) -> str:
        return _check_ae(v)


class DeliverySettings(Section):
    """Where results go, and how hard the node tries."""

    destinations: list[DestinationSettings] = Field(
        default_factory=list, description="Peers every job's results are sent to."
    )
    to_sender: bool = Field(
        default=False,
        description="Also send results back to the sending peer, at the `return_to` address of "
        "the route its series matched.",
    )
    calling_ae: str = Field(default="KNEENODE", description="Our AE title when sending results.")
    timeout: float = Field(default=60, gt=0, description="Network/DIMSE timeout per send (s).")
    max_attempts: int = Field(
        default=12, ge=1, description="Delivery attempts per job before SEND_FAILED (~1 hour)."
    )
    backoff_min_s: float = Field(default=10, gt=0, description="Delay before the second attempt.")
    backoff_max_s: float = Field(default=600, gt=0, description="Longest delay between attempts.")

    @field_validator("calling_ae")
    @classmethod
    def _ae_title(cls, v: str) -> str:
        return _check_ae(v)


class RetentionSettings(Section):
    """How long finished work stays on disk. Nothing undelivered is ever deleted automatically."""

    days: float = Field(
        default=7, gt=0, description="Remove spool and job folders this long after a job is done "
        "(delivered), ignored or cancelled. Failed jobs stay until retried or `kneenode purge`.",
    )
    interval_s: float = Field(default=3600, gt=0, description="How often `serve` applies it.")
    emergency_free_bytes: int = Field(
        default=10 * 1024**3, ge=0,
        description="Below this free space, finished jobs are removed oldest first before their "
        "time (done, then ignored, then cancelled); failed and active jobs are never touched.",
    )
    emergency_free_percent: float = Field(
        default=10.0, ge=0, le=100, description="The same threshold as a percentage of the disk."
    )


class HistorySettings(Section):
    """The results history: every finished job's measurements per patient pseudonym
    (docs/history.md). SQLite under the data folder by default; PostgreSQL for clusters."""

    enabled: bool = Field(
        default=True, description="Record every finished job in the history (stage `history`); "
        "off: the stage does nothing and `kneenode history` reads what is there.",
    )
    url: str = Field(
        default="", description="SQLAlchemy URL of the history database; empty = SQLite "
        "`data_dir/history/history.sqlite`. A cluster sets one PostgreSQL database for every "
        "host, e.g. `postgresql+psycopg://kneenode@db-host:5432/kneenode` (driver psycopg 3).",
    )
    password_file: Path | None = Field(
        default=None, description="File holding the database password (read whenever the history "
        "is opened, never logged), used when `url` has none.",
    )
    secret_file: Path | None = Field(
        default=None, description="Node secret that keys the patient pseudonyms (HMAC-SHA256 of "
        "Patient ID + Issuer); unset = `data_dir/history/secret.key`, generated (0600) on first "
        "use. Every host of a cluster needs the same secret; a new secret starts new pseudonyms.",
    )
    connect_timeout_s: float = Field(
        default=10, gt=0, description="How long opening the database (or waiting for a "
        "SQLite lock) may take before the stage is retried.",
    )


class LoggingSettings(Section):
    """Logs: structured, with UIDs and job IDs, never patient names or IDs."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO",
        description="Log level of the node's own logs; third-party libraries (highdicom, "
        "dramatiq, ...) log below WARNING only at DEBUG.",
    )
    format: Literal["console", "json"] = Field(default="console", description="Human or JSON lines.")


class NsmSettings(Section):
    """Neural shape model (NSM) fit of the femur and BScore (stage ``shape``)."""

    enabled: bool | None = Field(
        default=None,
        description="Run the shape stage; unset = on when a model folder for `type` is configured.",
    )
    type: Literal["bone_only", "bone_and_cart", "both"] = Field(
        default="bone_and_cart",
        description="Which fit(s): femur only, femur + femoral cartilage, or both (two fits).",
    )
    bone_cart_model: Path | None = Field(
        default=None,
        description="NSM model folder (model_params_config.json + model/<epoch>.pth), bone + cartilage.",
    )
    bone_only_model: Path | None = Field(default=None, description="NSM model folder, bone only.")
    bone_cart_bscore: Path | None = Field(
        default=None, description="BScore folder (model.json) matching bone_cart_model."
    )
    bone_only_bscore: Path | None = Field(
        default=None, description="BScore folder (model.json) matching bone_only_model."
    )
    epoch: int | None = Field(default=None, ge=0, description="Checkpoint epoch; unset = the highest.")
    device: str = Field(default="auto", description="auto (cuda when available), cpu, cuda or cuda:N.")
    iterations: int = Field(default=2000, ge=1, description="Most latent-optimisation iterations.")
    points: int = Field(
        default=20000, ge=100, description="SDF samples per iteration, split between the surfaces."
    )
    patience: int = Field(default=50, ge=1, description="Stop after this many iterations without improvement.")
    seed: int = Field(default=0, description="Seed of the latent init and sampling (set after moving to the device).")
    icp_iterations: int = Field(default=100, ge=1, description="Similarity-ICP iterations onto the mean shape.")
    icp_landmarks: int = Field(default=1000, ge=10, description="Points of the femur used by the ICP.")
    mean_shape_resolution: int = Field(
        default=128, ge=16, description="Marching-cubes grid (per axis) of the mean shape."
    )
    recon_resolution: int = Field(
        default=256, ge=16, description="Fine marching-cubes grid of the reconstructed meshes (64 coarse)."
    )
    implementation: Literal["vectorised", "plain"] = Field(
        default="vectorised", description="Fitting loop: on-device vectorised, or the plain reference loop."
    )
    save_meshes: bool = Field(default=False, description="Write the reconstructed meshes (PLY) to the job folder.")

    def active(self) -> bool:
        """Whether the stage runs: ``enabled`` if set, else whether the needed models are configured."""
        if self.enabled is not None:
            return self.enabled
        need = {"bone_only": [self.bone_only_model], "bone_and_cart": [self.bone_cart_model],
                "both": [self.bone_only_model, self.bone_cart_model]}[self.type]
        return all(p is not None for p in need)


#: Default plausible ranges of volume ratios ("A/B" = volume of A / volume of B), wide enough for
#: both phantom presets and adult knees; a ratio outside its range fails QC.
DEFAULT_QC_RATIOS: dict[str, tuple[float, float]] = {
    "tibia/femur": (0.2, 5.0),
    "patella/femur": (0.02, 0.6),
    "femoral cartilage/femur": (0.005, 0.5),
    "patellar cartilage/patella": (0.02, 1.5),
    "medial tibial cartilage/lateral tibial cartilage": (0.25, 4.0),
    "medial meniscus/lateral meniscus": (0.25, 4.0),
    "patellar cartilage/femoral cartilage": (0.03, 1.0),
}


class QcSettings(Section):
    """Segmentation QC (stage ``qc``, after ``segment``): plausibility and the model's confidence.

    A ``fail`` reason makes the outcome ``fail``; ``on_fail`` decides what is delivered then.
    """

    enabled: bool = Field(default=True, description="Run the QC stage (off: outcome `pass` is not "
                          "claimed; results carry no QC item).")
    on_fail: Literal["deliver_flagged", "pdf_only", "hold"] = Field(
        default="hold",
        description="On outcome fail: deliver every object flagged (banner, SR QC item), deliver "
        "only the PDF report with the reasons, or hold the job in state `review` until "
        "`kneenode release` / `kneenode discard`.",
    )
    min_volume_mm3: float = Field(
        default=15.0, ge=0, description="A structure smaller than this is missing (fail)."
    )
    min_main_component: float = Field(
        default=0.8, ge=0, le=1,
        description="Share of a bone's volume in its largest piece; below it the bone fails.",
    )
    min_main_component_soft: float = Field(
        default=0.4, ge=0, le=1,
        description="The same for cartilage and menisci (thin: two pieces at coarse spacing are "
        "normal); below it the structure warns.",
    )
    on_bone_distance_mm: float = Field(
        default=4.0, gt=0,
        description="A cartilage voxel within this distance of its bone lies on it (a meniscus "
        "voxel: of the tibia or its cartilage).",
    )
    min_on_bone: float = Field(
        default=0.6, ge=0, le=1,
        description="Share of a cartilage's (meniscus's) voxels that must lie on its bone "
        "(femur, tibia, patella); below it the structure fails.",
    )
    max_border: float = Field(
        default=0.02, ge=0, le=1,
        description="Share of a cartilage's or meniscus's voxels on the image border above which "
        "the field of view cuts it (fail).",
    )
    ratios: dict[str, tuple[float, float]] = Field(
        default_factory=lambda: dict(DEFAULT_QC_RATIOS),
        description="Plausible volume ratios, 'A/B' -> [low, high] (structure names of the "
        "canonical labels); outside = fail.",
    )
    uncertain_probability: float = Field(
        default=0.6, gt=0, lt=1,
        description="A voxel whose winning class probability is below this is uncertain.",
    )
    warn_mean_confidence: float = Field(
        default=0.95, ge=0, le=1, description="Mean foreground probability below this warns."
    )
    fail_mean_confidence: float = Field(
        default=0.9, ge=0, le=1, description="Mean foreground probability below this fails."
    )
    warn_uncertain: float = Field(
        default=0.15, ge=0, le=1,
        description="Share of a structure's voxels that are uncertain above which it warns.",
    )
    fail_uncertain: float = Field(
        default=0.35, ge=0, le=1,
        description="Share of a structure's voxels that are uncertain above which it fails.",
    )

    @field_validator("ratios")
    @classmethod
    def _ratio_names(cls, v: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        for key, (low, high) in v.items():  # the names are checked by pipeline.qc (layering)
            if len([p for p in key.split("/") if p.strip()]) != 2:
                raise ValueError(f"ratio '{key}' must be 'A/B' (two structure names)")
            if not 0 <= low < high:
                raise ValueError(f"ratio '{key}' needs 0 <= low < high")
        return v


#: Smallest detectable change of the mean cartilage thickness per region (mm). Placeholder: 0.2 mm
#: is about 2.77 x a test-retest SD of 0.07 mm (3-4 % of a 2 mm plate), the order of the
#: femorotibial test-retest precision of 3 T DESS morphometry (Schneider et al., Osteoarthritis
#: Cartilage 2012;20:869-879); not read from a table of that paper: calibrate with your own
#: test-retest scans (docs/change.md).
DEFAULT_SDC_MM: dict[str, float] = {
    "ant_fem_cart": 0.2, "med_wb_fem_cart": 0.2, "lat_wb_fem_cart": 0.2,
    "med_post_fem_cart": 0.2, "lat_post_fem_cart": 0.2, "med_tib_cart": 0.2,
    "lat_tib_cart": 0.2, "pat_cart": 0.2,
}
#: Smallest detectable change of the cartilage plate volumes (% of the prior volume). Placeholder.
DEFAULT_SDC_VOLUME_PERCENT: dict[str, float] = {
    "fem_cart": 5.0, "med_tib_cart": 5.0, "lat_tib_cart": 5.0, "pat_cart": 5.0,
}


class ChangeSettings(Section):
    """Change since the most recent prior exam of the same knee (pipeline.change, docs/change.md).

    A region is flagged when the absolute change exceeds its smallest detectable change (SDC):
    the change a test-retest pair of scans of an unchanged knee stays below in 95 % of pairs
    (1.96 x sqrt(2) x the test-retest SD).
    """

    sdc_mm: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_SDC_MM),
        description="Smallest detectable change of the mean thickness per region (mm); a region "
        "whose |change| exceeds it is flagged. Default 0.2 mm everywhere: a placeholder of the "
        "order of published 3 T DESS test-retest precision (docs/change.md).",
    )
    sdc_volume_percent: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_SDC_VOLUME_PERCENT),
        description="Smallest detectable change of each cartilage plate volume (% of the prior "
        "volume); a plate whose |change| exceeds it is flagged. Default 5 %: a placeholder.",
    )
    min_interval_days: int = Field(
        default=90, ge=0,
        description="Priors closer than this to the current exam are not compared (a rate per "
        "year from a shorter interval is mostly noise; 3-6 months is about the shortest "
        "interval at which cartilage loss was detected, Osteoarthritis Cartilage "
        "2010;18:677-683, doi:10.1016/j.joca.2010.02.010).",
    )
    use_failed_qc_priors: bool = Field(
        default=False,
        description="Compare with a prior whose segmentation QC outcome was fail (off: such "
        "priors are skipped with the reason).",
    )

    @field_validator("sdc_mm", "sdc_volume_percent")
    @classmethod
    def _positive(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {k: x for k, x in v.items() if not x > 0}
        if bad:  # the region names are checked by pipeline.change (layering)
            raise ValueError(f"every smallest detectable change must be > 0, got {bad}")
        return v


PROFILE_SECTIONS: tuple[str, ...] = ("segment", "nsm", "encode", "delivery", "qc", "change")
PROFILE_JOB_KEYS: tuple[str, ...] = ("optional_stages", "stage_time_limit_s", "stage_time_limits")
DEFAULT_PROFILE = "default"


class ProfileSettings(Section):
    """A processing profile: a partial override of the analysis settings (docs/profiles.md).

    Only the keys it names differ from the node-wide sections; everything else is inherited.
    """

    description: str = Field(default="", description="What the profile is for (shown in jobs).")
    segment: dict[str, Any] = Field(
        default_factory=dict, description="Overrides of [segment], e.g. {configuration = ...}."
    )
    nsm: dict[str, Any] = Field(default_factory=dict, description="Overrides of [nsm].")
    encode: dict[str, Any] = Field(default_factory=dict, description="Overrides of [encode].")
    delivery: dict[str, Any] = Field(default_factory=dict, description="Overrides of [delivery].")
    qc: dict[str, Any] = Field(
        default_factory=dict, description="Overrides of [qc], e.g. {on_fail = \"pdf_only\"}."
    )
    change: dict[str, Any] = Field(
        default_factory=dict, description="Overrides of [change], e.g. {min_interval_days = 180}."
    )
    optional_stages: list[str] | None = Field(
        default=None, description="Overrides jobs.optional_stages."
    )
    stage_time_limit_s: float | None = Field(
        default=None, gt=0, description="Overrides jobs.stage_time_limit_s."
    )
    stage_time_limits: dict[str, float] | None = Field(
        default=None, description="Overrides jobs.stage_time_limits."
    )


class PriorsSettings(Section):
    """Priors from PACS for the series of one route (docs/priors.md).

    A route property, not a profile key: which PACS holds a patient's earlier exams depends on
    where the series came from (like ``return_to``), while how a prior is analysed is fixed by
    the current job (same profile, same model).
    """

    enabled: bool = Field(
        default=False, description="Look up earlier MR exams of the patient in `pacs` when a "
        "knee series of this route arrives, retrieve the matching series and report the change.",
    )
    pacs: DestinationSettings | None = Field(
        default=None, description="The PACS queried (C-FIND) and retrieved from (C-MOVE/C-GET): "
        "AE title, host, port, TLS, as a destination.",
    )
    calling_ae: str | None = Field(
        default=None, description="Our AE title in C-FIND/C-MOVE/C-GET; unset = scp.ae_title.",
    )
    method: Literal["move", "get"] = Field(
        default="move", description="move: C-MOVE to `move_destination` (the PACS must know that "
        "AE's host and port); get: C-GET, the instances come back on our own association.",
    )
    move_destination: str | None = Field(
        default=None, description="AE title the PACS sends a C-MOVE to; unset = scp.ae_title.",
    )
    max_priors: int = Field(
        default=1, ge=1, le=20, description="Most earlier studies retrieved (newest first).",
    )
    max_age_days: float = Field(
        default=3650, gt=0, description="Only studies at most this many days before the "
        "current one are looked for.",
    )
    find_timeout_s: float = Field(
        default=15, gt=0, description="Time limit of each C-FIND (connect, answer, every match)."
    )
    retrieve_timeout_s: float = Field(
        default=300, gt=0, description="Time limit of each C-MOVE / C-GET of one series.",
    )
    wait_s: float = Field(
        default=900, gt=0, description="How long the `compare` stage waits for the priors "
        "(lookup, retrieval, their processing) before the job goes on without the comparison.",
    )

    @field_validator("calling_ae", "move_destination")
    @classmethod
    def _ae_title(cls, v: str | None) -> str | None:
        return None if v is None else _check_ae(v)

    @model_validator(mode="after")
    def _needs_pacs(self) -> PriorsSettings:
        if self.enabled and self.pacs is None:
            raise ValueError("priors.enabled needs priors.pacs (ae_title, host, port)")
        return self


class RouteTarget(Section):
    """What a series gets from the route it matched: a profile, destinations, per-route values."""

    action: Literal["process", "ignore"] = Field(
        default="process", description="process: make a job; ignore: record the series as ignored."
    )
    profile: str = Field(
        default=DEFAULT_PROFILE,
        description="Processing profile ([profiles.<name>]; `default` = the node-wide sections).",
    )
    destinations: list[DestinationSettings] | None = Field(
        default=None, description="Where results go; unset = the profile's delivery.destinations."
    )
    return_to: str | None = Field(
        default=None,
        description="AET@HOST:PORT where the sender receives results (with delivery.to_sender).",
    )
    quiet_seconds: float | None = Field(
        default=None, gt=0, description="Series completion quiet period (overrides completion)."
    )
    completion_policy: Literal["auto", "timer"] | None = Field(
        default=None, description="Series completion policy (overrides completion.policy)."
    )
    process_all: bool = Field(
        default=False, description="Skip the knee pattern (this sender only sends knees)."
    )
    min_slices: int | None = Field(default=None, ge=1, description="Overrides jobs.selection.min_slices.")
    pattern: str | None = Field(default=None, description="Overrides jobs.selection.pattern.")
    priors: PriorsSettings = Field(
        default_factory=PriorsSettings,
        description="Earlier exams of the patient from PACS, and the change since (docs/priors.md).",
    )

    @field_validator("return_to")
    @classmethod
    def _return_to(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^[^@\s]{1,16}@[^\s]+:[0-9]{1,5}$", v):
            raise ValueError("expected AET@HOST:PORT")
        return v

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, v: str | None) -> str | None:
        if v is not None:
            re.compile(v)
        return v


class RouteSettings(RouteTarget):
    """One routing rule: match criteria (all given ones must hold) and what the series gets.

    Routes are tried in order, the first match wins; no match -> [default_route]. A route that
    names ``calling_ae`` or ``hosts`` also admits those peers (the allow-list).
    """

    name: str = Field(description="Name recorded in each job (and a metrics label).")
    calling_ae: list[str] = Field(default_factory=list, description="Calling AE titles; empty = any.")
    called_ae: list[str] = Field(
        default_factory=list,
        description="Called AE titles (virtual AEs this node answers to); empty = any.",
    )
    hosts: list[str] = Field(
        default_factory=list, description="IP addresses or CIDR networks; empty = any address."
    )
    modality: list[str] = Field(
        default_factory=list,
        description="Series modalities; empty = any. Also the modalities selection accepts.",
    )
    body_part: str | None = Field(default=None, description="Regex (case-insensitive) on Body Part Examined.")
    description: str | None = Field(
        default=None,
        description="Regex (case-insensitive) searched in Series Description and Protocol Name.",
    )

    @field_validator("calling_ae", "called_ae")
    @classmethod
    def _aes(cls, v: list[str]) -> list[str]:
        return [_check_ae(a) for a in v]

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, v: list[str]) -> list[str]:
        for h in v:
            ipaddress.ip_network(h, strict=False)  # raises ValueError with the bad value
        return v

    @field_validator("body_part", "description")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v is not None:
            re.compile(v)
        return v

    @property
    def names_peer(self) -> bool:
        """Whether the route identifies a sender (and so admits it)."""
        return bool(self.calling_ae or self.hosts)


ROLES = ("viewer", "operator")
USER_NAME = r"[A-Za-z0-9._-]{1,64}"


class UserAccount(Section):
    """One console account ([http.users.<name>]); `kneenode user add` writes it."""

    password_hash: str = Field(
        description="argon2id hash of the password (`kneenode user add NAME` or `kneenode user "
        "hash`); never the password itself.",
    )
    role: Literal["viewer", "operator"] = Field(
        default="viewer",
        description="viewer: every page and download; operator: also upload and the actions "
        "(retry, reprocess, cancel, resend, release, discard).",
    )

    @field_validator("password_hash")
    @classmethod
    def _is_argon2(cls, value: str) -> str:
        if not value.startswith("$argon2"):
            raise ValueError("not an argon2 hash: make one with `kneenode user hash`")
        return value


class HttpSettings(Section):
    """The web console on the HTTP status server (address and port: `jobs.http_host/port`)."""

    users: dict[str, UserAccount] = Field(
        default_factory=dict,
        description="Console accounts ([http.users.<name>]: password_hash, role). Without any, "
        "the node serves the console only on a loopback `jobs.http_host`, without login, to "
        "everyone on this machine as operator `local`; off loopback it refuses to start.",
    )
    show_patient: bool = Field(
        default=False,
        description="Show patient name and ID in the console (read from the series headers "
        "when a page is drawn; never logged or stored in job records).",
    )
    session_secret: str | None = Field(
        default=None,
        description="Key signing session cookies and CSRF tokens (32+ characters); unset = a "
        "random key kept in data_dir/http-secret (mode 0600), so logins survive a restart.",
    )
    session_max_age_s: int = Field(
        default=43200, ge=60, description="A login lasts this long (s), then the user logs in "
        "again.",
    )
    tls_cert: Path | None = Field(
        default=None, description="PEM certificate: serve HTTP over TLS (with `tls_key`)."
    )
    tls_key: Path | None = Field(default=None, description="PEM private key for `tls_cert`.")
    secure_cookies: bool | None = Field(
        default=None,
        description="Mark cookies Secure (sent over HTTPS only); unset = exactly when the node "
        "serves TLS itself (`tls_cert`). Set true behind a TLS-terminating reverse proxy.",
    )

    @model_validator(mode="after")
    def _check(self) -> HttpSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("'http.tls_cert' and 'http.tls_key' go together")
        if self.session_secret is not None and len(self.session_secret) < 32:
            raise ValueError("'http.session_secret': at least 32 characters")
        for name in self.users:
            if not re.fullmatch(USER_NAME, name):
                raise ValueError(f"'http.users.{name}': a user name is 1-64 letters, digits, "
                                 "'.', '_' or '-'")
        return self

    @property
    def cookies_secure(self) -> bool:
        """Whether session cookies carry the Secure flag (the rule of `secure_cookies`)."""
        return self.tls_cert is not None if self.secure_cookies is None else self.secure_cookies


class Settings(BaseSettings):
    """Root of the settings tree."""

    model_config = SettingsConfigDict(
        env_prefix="KNEENODE_", env_nested_delimiter="__", extra="forbid", validate_assignment=True
    )

    data_dir: Path = Field(
        default=Path("data"), description="Folder for the spool, job folders and embedded redis data."
    )
    scp: ScpSettings = Field(default_factory=ScpSettings, description="Storage SCP.")
    spool: SpoolSettings = Field(default_factory=SpoolSettings, description="Durable spool.")
    upload: UploadSettings = Field(
        default_factory=UploadSettings, description="Uploaded series (web console, kneenode upload)."
    )
    completion: CompletionSettings = Field(
        default_factory=CompletionSettings, description="Series completion."
    )
    reader: ReaderSettings = Field(
        default_factory=ReaderSettings, description="Series reader tolerances (docs/series.md)."
    )
    logging: LoggingSettings = Field(default_factory=LoggingSettings, description="Logging.")
    retention: RetentionSettings = Field(
        default_factory=RetentionSettings, description="Disk retention of finished jobs."
    )
    history: HistorySettings = Field(
        default_factory=HistorySettings, description="Results history per patient (docs/history.md)."
    )
    delivery: DeliverySettings = Field(
        default_factory=DeliverySettings, description="Result delivery (C-STORE to PACS)."
    )
    encode: EncodeSettings = Field(
        default_factory=EncodeSettings, description="Result DICOM objects (SEG, SR, overlay, PDF)."
    )
    jobs: JobsSettings = Field(default_factory=JobsSettings, description="Job system.")
    http: HttpSettings = Field(
        default_factory=HttpSettings, description="Web console: accounts, sessions, patient data."
    )
    segment: SegmentSettings = Field(
        default_factory=SegmentSettings, description="nnU-Net v2 segmentation model."
    )
    nsm: NsmSettings = Field(
        default_factory=NsmSettings, description="Neural shape model fit and BScore (stage shape)."
    )
    qc: QcSettings = Field(
        default_factory=QcSettings, description="Segmentation QC and what a failed result delivers."
    )
    change: ChangeSettings = Field(
        default_factory=ChangeSettings,
        description="Change since the most recent prior exam: smallest detectable changes.",
    )
    profiles: dict[str, ProfileSettings] = Field(
        default_factory=dict,
        description="Processing profiles ([profiles.<name>]), each a partial override of segment, "
        "nsm, encode, delivery, qc and the stage options.",
    )
    routes: list[RouteSettings] = Field(
        default_factory=list,
        description="Routing rules ([[routes]]), first match wins; they also list the peers.",
    )
    default_route: RouteTarget = Field(
        default_factory=RouteTarget, description="What a series matching no route gets."
    )

    @model_validator(mode="after")
    def _check_profiles(self) -> Settings:
        if DEFAULT_PROFILE in self.profiles:
            raise ValueError(f"'profiles.{DEFAULT_PROFILE}' is reserved: the node-wide sections "
                             "are the default profile")
        names = [r.name for r in self.routes]
        if len(set(names)) != len(names):
            raise ValueError(f"'routes': route names must be unique (got {names})")
        for where, target in [("default_route", self.default_route),
                              *((f"routes.{i}", r) for i, r in enumerate(self.routes))]:
            if target.profile != DEFAULT_PROFILE and target.profile not in self.profiles:
                raise ValueError(f"'{where}.profile': no profile '{target.profile}' (have: "
                                 f"{', '.join([DEFAULT_PROFILE, *self.profiles])})")
        for name in self.profiles:
            self.for_profile(name)
        return self

    def for_profile(self, name: str, sets: dict[str, Any] | None = None) -> Settings:
        """These settings with profile ``name`` applied (then ``sets``, shaped like a profile).

        Raises
        ------
        ValueError
            Naming ``profiles.<name>.<key>`` (or ``set.<key>``) when an override is invalid.
        """
        if name != DEFAULT_PROFILE and name not in self.profiles:
            raise ValueError(f"no profile '{name}' (have: {', '.join([DEFAULT_PROFILE, *self.profiles])})")
        layers: list[tuple[str, dict[str, Any]]] = []
        if name != DEFAULT_PROFILE:
            layers.append((f"profiles.{name}", self.profiles[name].model_dump(exclude_unset=True)))
        if sets:
            layers.append(("set", sets))
        update: dict[str, Any] = {}
        jobs = self.jobs
        for where, layer in layers:
            for section in PROFILE_SECTIONS:
                if layer.get(section):
                    current = update.get(section, getattr(self, section))
                    merged = _merge(current.model_dump(), layer[section])
                    update[section] = _validated(type(current), merged, f"{where}.{section}")
            job_keys = {k: layer[k] for k in PROFILE_JOB_KEYS if layer.get(k) is not None}
            if job_keys:
                jobs = _validated(JobsSettings, {**jobs.model_dump(), **job_keys}, where)
            unknown = set(layer) - {*PROFILE_SECTIONS, *PROFILE_JOB_KEYS, "description"}
            if unknown:
                raise ValueError(f"'{where}.{min(unknown)}': not a profile key (profiles "
                                 f"override {', '.join((*PROFILE_SECTIONS, *PROFILE_JOB_KEYS))})")
        if jobs is not self.jobs:
            update["jobs"] = jobs
        return self.model_copy(update=update)


    @property
    def spool_dir(self) -> Path:
        """Root of the spool (``incoming/`` and the spool's own temp folder live under it)."""
        return self.data_dir / "spool"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = os.environ.get(CONFIG_ENV)
        if path:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(path)))
        return tuple(sources)


class SettingsError(Exception):
    """A configuration problem, already phrased for the operator (names the key)."""


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``override`` applied key by key (nested tables merge, values replace)."""
    out = dict(base)
    for k, v in override.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _validated(cls: type[Section], data: dict[str, Any], where: str) -> Any:
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        raise ValueError(f"'{where}.{key}': {err['msg']}") from None


def _check_ae(v: str) -> str:
    if not 0 < len(v) <= 16 or not v.isascii() or "\\" in v or v != v.strip():
        raise ValueError("an AE title has 1-16 ASCII characters, no backslash, no edge spaces")
    return v


def load_settings(config: Path | None = None, **overrides: Any) -> Settings:
    """Load and validate the settings; raise :class:`SettingsError` naming the bad key.

    ``config`` (the ``--config`` option) wins over ``KNEENODE_CONFIG``.
    """
    previous = os.environ.get(CONFIG_ENV)
    try:
        if config is not None:
            if not Path(config).is_file():
                raise SettingsError(f"config file not found: {config}")
            os.environ[CONFIG_ENV] = str(config)
        elif previous and not Path(previous).is_file():
            raise SettingsError(f"config file not found: {previous} (from {CONFIG_ENV})")
        return Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError(_describe(exc)) from None
    except ValueError as exc:  # TOML syntax errors
        raise SettingsError(f"cannot read config: {exc}") from None
    finally:
        if config is not None:
            if previous is None:
                os.environ.pop(CONFIG_ENV, None)
            else:
                os.environ[CONFIG_ENV] = previous


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        value = err.get("input")
        shown = "" if isinstance(value, dict) else f" (got {value!r})"
        if not key:  # a check across sections: the message names the key itself
            lines.append(f"invalid setting {str(err['msg']).removeprefix('Value error, ')}")
            continue
        lines.append(f"invalid setting '{key}': {err['msg']}{shown}")
    return "; ".join(lines)
