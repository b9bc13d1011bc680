"""workers.review against a real redis-server: hold, release, discard and their guards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kneenode.errors import NodeError
from workers.jobstate import JobStore
from workers.review import after_qc, discard, release


def _job(store: JobStore, tmp_path: Path, outcome: str, policy: str) -> tuple[str, Path]:
    job_dir = tmp_path / f"job-{outcome}-{policy}"
    (job_dir / "qc").mkdir(parents=True)
    reasons = [] if outcome == "pass" else [{"message": "patellar cartilage missing (0 mm3)",
                                             "severity": "fail"}]
    (job_dir / "qc" / "qc.json").write_text(json.dumps(
        {"outcome": outcome, "policy": policy, "reasons": reasons, "summary": "FAIL: x"}))
    job_id, _ = store.create(f"1.2.{outcome}.{policy}", 1, {"job_dir": str(job_dir),
                                                           "chain": ["qc", "quantify"]})
    store.update(job_id, state="running:qc")
    return job_id, job_dir


@pytest.mark.parametrize(("outcome", "policy", "held"),
                         [("fail", "hold", True), ("fail", "pdf_only", False),
                          ("fail", "deliver_flagged", False), ("warn", "hold", False),
                          ("pass", "hold", False)])
def test_only_a_failed_result_under_hold_is_held(store, tmp_path, outcome, policy, held):
    job_id, job_dir = _job(store, tmp_path, outcome, policy)
    assert after_qc(store, job_id, 1, job_dir, "quantify") is held
    job = store.get(job_id)
    assert job["qc"] == outcome
    assert (job["state"] == "review") is held
    if held:
        assert job["error"]["code"] == "QC_FAILED" and job["stage"] == "quantify"


def test_release_then_a_redelivered_qc_message_is_not_held_again(store, tmp_path):
    job_id, job_dir = _job(store, tmp_path, "fail", "hold")
    assert after_qc(store, job_id, 1, job_dir, "quantify")
    assert release(store, job_id, "op") == ("quantify", 1)
    assert store.get(job_id)["state"] == "queued"
    assert after_qc(store, job_id, 1, job_dir, "quantify") is False  # a duplicate message
    with pytest.raises(NodeError, match="not in review"):
        release(store, job_id)
    with pytest.raises(NodeError, match="not in review"):
        discard(store, job_id)


def test_discard_ends_the_job_and_records_the_operator(store, tmp_path):
    job_id, job_dir = _job(store, tmp_path, "fail", "hold")
    after_qc(store, job_id, 1, job_dir, "quantify")
    discard(store, job_id, "dr-x")
    job = store.get(job_id)
    assert job["state"] == "cancelled" and "discarded" in job["reason"]
    assert json.loads((job_dir / "review.json").read_text())["operator"] == "dr-x"
    assert [e["kind"] for e in store.events(job_id)][-1] == "discarded"
    with pytest.raises(NodeError, match="no job"):
        release(store, "nope")
