"""Deployment files: validated with the tools that run here (no Docker engine on these machines)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kneenode.settings import load_settings

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
VENV_BIN = Path(sys.executable).parent


def test_compose_file_is_valid():
    done = subprocess.run(["docker-compose", "-f", str(DEPLOY / "docker-compose.yml"),
                           "--profile", "demo", "config", "--services"],
                          check=False, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert set(done.stdout.split()) == {"redis", "node", "gpu-worker", "orthanc"}


def test_production_config_example_is_valid():
    settings = load_settings(DEPLOY / "kneenode.toml")
    assert not settings.scp.allow_loopback and settings.delivery.to_sender
    assert [r.name for r in settings.routes] == ["research", "clinical", "scanner"]
    assert [r.profile for r in settings.routes] == ["research", "clinical", "clinical"]
    research = settings.for_profile("research")
    assert research.segment.configuration == "3d_cascade_fullres" and research.nsm.type == "both"
    clinical = settings.for_profile("clinical")
    assert not clinical.encode.sr and not clinical.encode.overlay and clinical.encode.pdf


@pytest.mark.parametrize("unit", sorted(p.name for p in (DEPLOY / "systemd").glob("*.service")))
def test_systemd_units_verify(unit, tmp_path):
    text = (DEPLOY / "systemd" / unit).read_text().replace("/opt/kneenode/.venv/bin", str(VENV_BIN))
    name = unit.replace("@.service", "@0.service")
    (tmp_path / name).write_text(text)
    done = subprocess.run(["systemd-analyze", "verify", str(tmp_path / name)],
                          check=False, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "kneenode" in text and "ExecStart=" in text


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.cuda"])
def test_dockerfiles_copy_what_exists(dockerfile):
    root = DEPLOY.parent
    copies = re.findall(r"^COPY (\S+(?: \S+)*) \S+$", (DEPLOY / dockerfile).read_text(), re.MULTILINE)
    assert copies
    for sources in copies:
        for src in sources.split():
            assert (root / src).exists(), f"{dockerfile}: COPY {src} does not exist"
    assert shutil.which("docker-compose")
