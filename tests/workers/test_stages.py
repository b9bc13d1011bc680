"""The node's own stages and the chain mechanism (plain functions, no queue needed)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import SimpleITK as sitk
from pydicom import dcmread

from kneenode.errors import ErrorCode, NodeError
from kneenode.settings import Settings
from tests.support.mr import mr_series, scanner_like_series
from workers.analysis import node_chain, prepare
from workers.stages import (
    StageContext,
    clear_from,
    fresh_work_dir,
    is_done,
    load_chain,
    mark_done,
)


def _ctx(tmp_path: Path, series: Path) -> StageContext:
    job_dir = tmp_path / "job"
    return StageContext(job_id="j", job_dir=job_dir, series_path=series,
                        work_dir=fresh_work_dir(job_dir, "prepare"), summary={},
                        settings=Settings(data_dir=tmp_path))


def test_prepare_reads_the_series_next_to_its_summary(tmp_path: Path) -> None:
    series = tmp_path / "v1"
    mr_series(series, slices=24, rows=32, columns=28)
    (series / "summary.json").write_text("{}")  # the edge's sidecar must not confuse the reader
    ctx = _ctx(tmp_path, series)
    prepare(ctx)
    image = sitk.ReadImage(str(ctx.work_dir / "image.nii"))
    assert image.GetSize() == (28, 32, 24)
    info = json.loads((ctx.work_dir / "volume.json").read_text())
    assert len(info["slices"]) == 24 and info["modality"] == "MR"
    assert len(info["echo_times_ms"]) == 1  # one echo: no echo images written
    assert not list(ctx.work_dir.glob("echo_*.nii"))


def test_prepare_keeps_the_reader_warning_in_the_job(tmp_path: Path) -> None:
    """A resampled series: the warning is in volume.json and results.json; the reader tolerances
    come from the ``reader`` settings."""
    series = tmp_path / "v1"
    scanner_like_series(series)
    ctx = _ctx(tmp_path, series)
    prepare(ctx)
    info = json.loads((ctx.work_dir / "volume.json").read_text())
    assert len(info["warnings"]) == 1 and info["warnings"][0].startswith("non-uniform slice spacing")
    results = json.loads((ctx.job_dir / "results.json").read_text())
    assert results["warnings"] == info["warnings"]
    prepare(replace(ctx, work_dir=fresh_work_dir(ctx.job_dir, "prepare")))
    results = json.loads((ctx.job_dir / "results.json").read_text())
    assert results["warnings"] == info["warnings"]  # a retried prepare does not repeat it
    strict = Settings(data_dir=tmp_path, reader={"position_precision_mm": 0})
    ctx2 = StageContext(job_id="k", job_dir=tmp_path / "job2", series_path=series,
                        work_dir=fresh_work_dir(tmp_path / "job2", "prepare"), summary={},
                        settings=strict)
    with pytest.raises(NodeError, match="not stacked along their normal"):
        prepare(ctx2)


def test_prepare_reports_reader_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(NodeError) as err:
        prepare(_ctx(tmp_path, empty))
    assert err.value.code is ErrorCode.FILE_NOT_FOUND
    series = tmp_path / "v1"
    paths = mr_series(series, slices=24)
    ds = dcmread(paths[5])
    ds.Rows, ds.Columns = 16, 16
    ds.PixelData = b"\0" * (16 * 16 * 2)
    ds.save_as(paths[5])
    with pytest.raises(NodeError) as err:
        prepare(_ctx(tmp_path / "b", series))
    assert err.value.code is ErrorCode.INVALID_FORMAT and not err.value.retryable


def test_chain_loading_and_markers(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path)
    enabled = set(s.jobs.optional_stages)
    expected = [st.name for st in node_chain(s) if not st.optional or st.name in enabled]
    assert [st.name for st in load_chain(s)] == expected
    s.jobs.chain = "tests.workers.chains:fault_chain"
    assert [st.name for st in load_chain(s)] == ["s1", "s2", "s3", "s4"]
    s.jobs.optional_stages = ["s5"]
    assert [st.name for st in load_chain(s)][-1] == "s5"
    s.jobs.chain = "tests.workers.chains:nope"
    with pytest.raises(NodeError) as err:
        load_chain(s)
    assert err.value.code is ErrorCode.CONFIG_ERROR and "nope" in err.value.message
    job = tmp_path / "job"
    for name in ("a", "b", "c"):
        mark_done(job, name, {"run": 1})
    clear_from(job, ["a", "b", "c"], "b")
    assert [is_done(job, n) for n in "abc"] == [True, False, False]
