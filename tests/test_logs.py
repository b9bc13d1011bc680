"""Console logs: the node's own INFO lines show, third-party INFO (highdicom) only at DEBUG."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.mr import mr_series

REPO = Path(__file__).resolve().parent.parent

# highdicom's real INFO lines: copying the Patient and Study modules of a source image, as every
# result encoder does; then one INFO line of the node's own.
SCRIPT = """
import sys
import highdicom as hd
from pydicom import dcmread
from kneenode.logs import configure_logging, get_logger
from kneenode.settings import LoggingSettings

configure_logging(LoggingSettings(level=sys.argv[2]))
ds = dcmread(sys.argv[1])
sop = hd.base.SOPClass(study_instance_uid=ds.StudyInstanceUID, series_instance_uid=hd.UID(),
                       series_number=1, sop_instance_uid=hd.UID(), sop_class_uid=ds.SOPClassUID,
                       instance_number=1, modality="MR")
sop.copy_patient_and_study_information(ds)
get_logger("kneenode.encode").info("encoded", kind="seg")
"""


def _stderr(source: Path, level: str) -> str:
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(source), level], cwd=REPO,
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    return out.stderr


@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
def test_third_party_info_only_at_debug(tmp_path: Path, level: str) -> None:
    (source,) = mr_series(tmp_path / "s", slices=1)
    err = _stderr(source, level)
    assert "encoded" in err and "kind=seg" in err  # the node's own INFO line, at both levels
    assert ('copy attributes of module "Patient"' in err) == (level == "DEBUG"), err
