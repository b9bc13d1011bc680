"""Fixtures of the encoder tests: a small synthetic MR series, its labels, results, model card."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset

from tests.pipeline.encode.synthetic import make_card, make_labels, make_results, make_series


@pytest.fixture
def series() -> list[Dataset]:
    return make_series()


@pytest.fixture
def labels() -> np.ndarray:
    return make_labels()


@pytest.fixture
def results() -> dict[str, object]:
    return make_results()


@pytest.fixture
def card() -> dict[str, object]:
    return make_card()


def dciodvfy(ds: Dataset, tmp_path: Path, name: str = "object.dcm") -> tuple[list[str], list[str]]:
    """Write ``ds`` and run dicom3tools' dciodvfy on it: (errors, warnings)."""
    exe = shutil.which("dciodvfy")
    assert exe, "dciodvfy (Debian package dicom3tools) is required"
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=True)
    out = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=120, check=False)
    lines = (out.stdout + out.stderr).splitlines()
    return [x for x in lines if x.startswith("Error")], [
        x for x in lines if x.startswith("Warning")
    ]
