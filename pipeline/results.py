"""``results.json``: one typed, versioned record of a knee's results, written by every stage.

The node's stages and ``kneenode analyze`` write the same file through :func:`update_results`,
which merges a stage's keys into what earlier stages wrote, validates the whole record against
:data:`Results` (unknown keys and wrong types are errors, not silently kept) and writes
``results.json`` plus ``results.csv`` (the research pipeline's one-row table) atomically.

Measurement keys stay flat with the research pipeline's names (``<region>_mm_mean`` ...,
``<region>_t2_ms_mean`` ..., ``<tissue>_ml``, ``bscore``) so results stay comparable and the
encoders read them directly; descriptive records (input geometry, model card, segmentation, a
forced selection) are nested sections. Every field is present (null until its stage ran), so a
reader never has to guess whether a key was forgotten or not measured: ``missing`` says why a
measurement is null. ``seconds`` and ``nsm_seconds`` are timings; every other value is a
deterministic function of the input and the effective settings.

The JSON Schema is generated into ``docs/results.schema.json``:
``python -m pipeline.results docs/results.schema.json`` (a test checks it is current).
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, create_model

from kneenode.errors import ErrorCode, NodeError
from kneenode.fsio import write_json_atomic, write_text_atomic
from pipeline.change_report import CHANGE_TISSUES, ChangeReport
from pipeline.labels import TISSUE_KEYS
from pipeline.qc.record import QcRecord
from pipeline.quantify.results import THICKNESS_REGIONS
from pipeline.quantify.t2 import T2_REGIONS

SCHEMA_VERSION = 1
RESULTS_FILE = "results.json"
CSV_FILE = "results.csv"
T2_PARTS = ("", "_deep", "_superficial")
_CSV_STATS = ("mean", "std", "median")  # the research pipeline's column order
#: Keys whose values are timings (excluded when two runs are compared).
TIMING_KEYS = frozenset({"seconds", "nsm_seconds"})


class InputInfo(BaseModel):
    """What was analysed: the volume's format and grid (LPS, SimpleITK conventions)."""

    model_config = ConfigDict(extra="forbid")

    kind: str = Field(description="Reader's format: dicom, dicom-multiframe, nifti, nrrd or image.")
    modality: str | None = Field(default=None, description="DICOM Modality (null for files).")
    size: list[int] = Field(description="Voxels along i, j, k.")
    spacing: list[float] = Field(description="Voxel spacing (mm) along i, j, k.")
    origin: list[float] = Field(description="Centre of the first voxel (LPS, mm).")
    direction: list[float] = Field(description="Row-major 3x3 direction cosines (columns = axes).")
    echo_times_ms: list[float | None] = Field(description="Echo time of each echo (null unknown).")


class ModelInfo(BaseModel):
    """The segmentation model's identification (its card; extra card keys are kept)."""

    model_config = ConfigDict(extra="allow")

    algorithm_name: str
    algorithm_version: str
    is_demo: bool = False
    dataset: str | None = None
    configuration: str | None = None
    checkpoint_sha256: list[str] = Field(default_factory=list)


class SegmentationInfo(BaseModel):
    """What the segment stage found (the label map is ``segment/labels.nii.gz``)."""

    model_config = ConfigDict(extra="forbid")

    labels: dict[str, str] = Field(description="Canonical label value -> structure name.")
    voxels: dict[str, int] = Field(description="Voxels per structure.")
    device: str = Field(description="Device that predicted (cpu, cuda:N).")
    tta: bool = Field(description="Whether mirroring test-time augmentation ran.")


class SelectionOverride(BaseModel):
    """A series the selection rules refused and that ran anyway (``kneenode analyze --force``)."""

    model_config = ConfigDict(extra="forbid")

    forced: Literal[True] = True
    code: str = Field(description="The refusal that was overridden (NOT_KNEE, NOT_SELECTED).")
    reason: str = Field(description="The refusal's reason.")


def _qc_section(value: dict[str, Any]) -> dict[str, Any]:
    """The qc stage's record: a :class:`pipeline.qc.record.QcRecord` plus ``policy`` (qc.on_fail
    when it ran) and ``summary`` (one line), validated by QcRecord itself."""
    extra = {k: value.get(k) for k in ("policy", "summary")}
    if not all(isinstance(v, str) for v in extra.values()):
        raise ValueError("qc needs the strings 'policy' and 'summary'")
    QcRecord.model_validate({k: v for k, v in value.items() if k not in extra})
    return value


QcSection = Annotated[dict[str, Any], AfterValidator(_qc_section)]


class ResultsBase(BaseModel):
    """Sections and descriptive keys of results.json (the measurement keys are added below)."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = Field(default=1, description="Version of this schema (SCHEMA_VERSION).")
    study_uid: str | None = Field(default=None, description="Source Study Instance UID.")
    series_uid: str | None = Field(default=None, description="Source Series Instance UID.")
    input: InputInfo | None = None
    warnings: list[str] = Field(default_factory=list,
                                description="Reader warnings kept for the record (e.g. spacing "
                                "jitter that was resampled).")
    selection: SelectionOverride | None = Field(
        default=None, description="Set only when selection refused the series and it was forced.")
    model: ModelInfo | None = None
    segmentation: SegmentationInfo | None = None
    qc: QcSection | None = Field(
        default=None, description="Segmentation QC (stage qc): QcRecord (version, outcome, "
        "reasons, structures, ratios, confidence) plus policy and summary (docs/qc.md).")
    side: Literal["left", "right"] | None = Field(default=None, description="Knee side.")
    missing: dict[str, str] = Field(default_factory=dict, description="Key prefix -> why it is null.")
    units: dict[str, str] = Field(default_factory=dict, description="Unit per measurement kind.")
    algorithms: dict[str, str] = Field(default_factory=dict, description="Algorithm -> version.")
    thickness_vertices: dict[str, int] = Field(default_factory=dict,
                                               description="Bone-surface vertices per thickness region.")
    subregion_rule: dict[str, Any] = Field(default_factory=dict,
                                           description="Femoral subregion boundaries found.")
    t2_protocol: dict[str, Any] | None = Field(default=None, description="qDESS parameters used for T2.")
    nsm_type: str | None = Field(default=None, description="NSM fit(s) run: bone_only, bone_and_cart, both.")
    knee_side: str | None = Field(default=None, description="Side the shape stage fitted.")
    nsm_mirrored: bool | None = Field(default=None, description="Left knee mirrored before fitting.")
    nsm_clip_z_mm: float | None = Field(default=None, description="Femur clipping height (mm).")
    nsm_latent: list[float] | None = Field(default=None, description="Fitted latent vector.")
    nsm_transform: list[list[float]] | None = Field(default=None,
                                                    description="4x4 patient LPS -> model frame.")
    nsm_assd_bone_mm: float | None = Field(default=None, description="Fit quality, bone ASSD (mm).")
    nsm_assd_cart_mm: float | None = Field(default=None, description="Fit quality, cartilage ASSD (mm).")
    bscore: float | None = Field(default=None, description="BScore of the femur (0 = average healthy).")
    nsm_model: dict[str, Any] | None = Field(default=None, description="NSM model identification.")
    nsm_bscore_model: dict[str, Any] | None = Field(default=None, description="BScore model identification.")
    nsm_iterations: int | None = Field(default=None, description="Latent-fit iterations run.")
    nsm_loss: float | None = Field(default=None, description="Best latent-fit loss.")
    nsm_seconds: float | None = Field(default=None, description="Shape stage time (s; a timing).")
    change: ChangeReport | None = Field(
        default=None, description="Change since the most recent prior exam of this knee (stage "
        "compare; docs/change.md); null when not computed.")
    seconds: dict[str, float] = Field(default_factory=dict,
                                      description="Timings (s) per stage and step (merged by stages).")


def thickness_keys() -> list[str]:
    """``<region>_mm_<stat>`` in the research pipeline's column order (mean, std, median)."""
    return [f"{r}_mm_{s}" for r in THICKNESS_REGIONS for s in _CSV_STATS]


def t2_keys() -> list[str]:
    """``<region>[_deep|_superficial]_t2_ms_<stat>``."""
    return [f"{r}{p}_t2_ms_{s}" for r in T2_REGIONS for p in T2_PARTS for s in _CSV_STATS]


def volume_keys() -> list[str]:
    """``<tissue>_ml`` for the nine canonical tissues."""
    return [f"{k}_ml" for k in TISSUE_KEYS.values()]




def _measurement_fields() -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for key in thickness_keys():
        fields[key] = (float | None, Field(default=None, description="Cartilage thickness (mm)."))
    for key in t2_keys():
        fields[key] = (float | None, Field(default=None, description="qDESS T2 (ms)."))
    for key in volume_keys():
        fields[key] = (float | None, Field(default=None, description="Tissue volume (mL)."))
    return fields


#: The results.json model: :class:`ResultsBase` plus one nullable float per measurement key.
Results: type[ResultsBase] = create_model(  # type: ignore[call-overload]
    "Results", __base__=ResultsBase, __doc__="results.json of one knee (schema version 1).",
    **_measurement_fields(),
)

def change_columns() -> list[str]:
    """CSV columns of the change report (after the research pipeline's columns; empty cells
    when no comparison was made)."""
    cols = ["change_status", "change_prior_study_date", "change_interval_days"]
    for region in THICKNESS_REGIONS:
        cols += [f"{region}_mm_mean_change", f"{region}_mm_mean_change_pct_year",
                 f"{region}_mm_mean_change_flagged"]
    for tissue in CHANGE_TISSUES:
        cols += [f"{tissue}_mm3_change", f"{tissue}_ml_change_pct_year",
                 f"{tissue}_ml_change_flagged"]
    return cols


def _change_cells(change: Mapping[str, Any] | None) -> dict[str, Any]:
    """The change columns' values of one record (results.json's ``change`` section)."""
    if not change:
        return {}
    prior = change.get("prior") or {}
    out: dict[str, Any] = {"change_status": change.get("status"),
                           "change_prior_study_date": prior.get("study_date"),
                           "change_interval_days": change.get("interval_days")}
    for t in change.get("thickness", []):
        key = f"{t['region']}_mm_mean_change"
        out.update({key: t.get("change_mm"), f"{key}_pct_year": t.get("change_percent_per_year"),
                    f"{key}_flagged": t.get("flagged")})
    for v in change.get("volume", []):
        out.update({f"{v['tissue']}_mm3_change": v.get("change_mm3"),
                    f"{v['tissue']}_ml_change_pct_year": v.get("change_percent_per_year"),
                    f"{v['tissue']}_ml_change_flagged": v.get("flagged")})
    return out


#: The research pipeline's columns (flat results.json keys; the history keeps these per exam).
CSV_COLUMNS: tuple[str, ...] = (
    "study_uid", "series_uid", "side", *thickness_keys(), *t2_keys(), *volume_keys(),
    "bscore", "nsm_assd_bone_mm", "nsm_assd_cart_mm",
)
#: results.csv's header: the research columns, then the change since the prior exam.
RESULTS_CSV_COLUMNS: tuple[str, ...] = (*CSV_COLUMNS, *change_columns())


def validate_results(data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` validated against the schema, as JSON-ready dict (every field present).

    Raises
    ------
    NodeError
        PIPELINE_ERROR naming the offending key (a stage wrote something the schema does not
        know: a bug, never the input's fault).
    """
    try:
        return Results.model_validate(dict(data)).model_dump(mode="json")
    except ValidationError as exc:
        errs = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5])
        raise NodeError(ErrorCode.PIPELINE_ERROR, f"results.json does not match schema "
                        f"version {SCHEMA_VERSION}: {errs}",
                        hint="A stage wrote a key the results schema does not know; update "
                        "pipeline/results.py and docs/results.schema.json.") from None


def read_results(folder: Path) -> dict[str, Any]:
    """The validated results.json of a job (or analyze) folder; an empty record if none yet."""
    path = Path(folder) / RESULTS_FILE
    data = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    return validate_results(data)


def update_results(folder: Path, update: Mapping[str, Any]) -> dict[str, Any]:
    """Merge a stage's keys into ``folder/results.json`` (``seconds`` merged key by key),
    validate, and write results.json and results.csv atomically; returns the record."""
    path = Path(folder) / RESULTS_FILE
    current: dict[str, Any] = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    merged = {**current, **update}
    merged["seconds"] = {**current.get("seconds", {}), **update.get("seconds", {})}
    record = validate_results(merged)
    write_json_atomic(path, record)
    write_text_atomic(Path(folder) / CSV_FILE, csv_text(record))
    return record


def csv_text(record: Mapping[str, Any]) -> str:
    """results.csv: a header of :data:`RESULTS_CSV_COLUMNS` (the research pipeline's columns,
    then the change) and one row (null = empty)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(RESULTS_CSV_COLUMNS)
    values = {**record, **_change_cells(record.get("change"))}
    writer.writerow(["" if values.get(c) is None else values[c] for c in RESULTS_CSV_COLUMNS])
    return buf.getvalue()


def comparable(record: Mapping[str, Any]) -> dict[str, Any]:
    """``record`` without its timings (:data:`TIMING_KEYS`): what two runs must agree on."""
    return {k: v for k, v in record.items() if k not in TIMING_KEYS}


def json_schema() -> dict[str, Any]:
    """The JSON Schema of results.json (draft 2020-12, as pydantic writes it)."""
    schema = Results.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"https://kneenode/results.schema.v{SCHEMA_VERSION}.json"
    return schema


def schema_text() -> str:
    """The schema as written to docs/results.schema.json."""
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":  # python -m pipeline.results docs/results.schema.json
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/results.schema.json")
    target.write_text(schema_text(), encoding="utf-8")
    print(f"wrote {target}")
