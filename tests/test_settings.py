"""Settings: one typed tree, TOML + environment, one clear message per bad key (exit 2)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from kneenode.configfile import example_config
from kneenode.settings import Settings, SettingsError, load_settings

KNEENODE = str(Path(sys.executable).with_name("kneenode"))


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None
            ) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("KNEENODE_")}
    full.update(env or {})
    return subprocess.run([KNEENODE, *args], check=False, capture_output=True, text=True, env=full, cwd=cwd,
                          timeout=120)


def test_defaults():
    s = Settings()
    assert s.scp.ae_title == "KNEENODE" and s.scp.port == 11112
    assert s.scp.max_associations == 8 and s.completion.quiet_seconds == 20
    assert s.spool.min_free_bytes == 5 * 1024**3 and s.spool.min_free_percent == 5


def test_toml_then_environment_override(tmp_path, monkeypatch):
    cfg = tmp_path / "k.toml"
    cfg.write_text('[scp]\nport = 4242\nae_title = "KNEE1"\n[completion]\nquiet_seconds = 5\n')
    monkeypatch.setenv("KNEENODE_SCP__PORT", "5555")
    s = load_settings(cfg)
    assert (s.scp.port, s.scp.ae_title, s.completion.quiet_seconds) == (5555, "KNEE1", 5)


@pytest.mark.parametrize("text,key", [
    ("[scp]\nport = 70000\n", "scp.port"),
    ("[scp]\nae_title = \"THIS_TITLE_IS_WAY_TOO_LONG\"\n", "scp.ae_title"),
    ("[scp]\nportt = 1\n", "scp.portt"),
    ("[[routes]]\nname = \"p\"\ncalling_ae = [\"PACS\"]\nhosts = [\"10.0.0.300/8\"]\n", "routes.0.hosts"),
    ("[profiles.r]\nsegment = {configration = \"3d_fullres\"}\n", "profiles.r.segment.configration"),
    ("[profiles.r]\nnsm = {type = \"femur\"}\n", "profiles.r.nsm.type"),
    ("[[routes]]\nname = \"p\"\nprofile = \"nope\"\n", "routes.0.profile"),
    ("[completion]\nquiet_seconds = -1\n", "completion.quiet_seconds"),
])
def test_invalid_value_names_the_key(tmp_path, text, key):
    cfg = tmp_path / "k.toml"
    cfg.write_text(text)
    with pytest.raises(SettingsError, match=f"'{key}'"):
        load_settings(cfg)


def test_cli_exits_2_with_one_clear_message(tmp_path):
    cfg = tmp_path / "k.toml"
    cfg.write_text("[scp]\nport = \"eleven\"\n")
    done = run_cli("--config", str(cfg), "config", "show")
    assert done.returncode == 2
    assert "invalid setting 'scp.port'" in done.stderr and "Traceback" not in done.stderr
    env_bad = run_cli("config", "show", env={"KNEENODE_SCP__MAX_ASSOCIATIONS": "0"})
    assert env_bad.returncode == 2 and "scp.max_associations" in env_bad.stderr
    missing = run_cli("config", "show", env={"KNEENODE_CONFIG": str(tmp_path / "none.toml")})
    assert missing.returncode == 2 and "not found" in missing.stderr


def test_config_init_writes_a_commented_example_that_documents_every_key(tmp_path):
    done = run_cli("config", "init", str(tmp_path / "kneenode.toml"))
    assert done.returncode == 0, done.stderr
    text = (tmp_path / "kneenode.toml").read_text()
    assert text == example_config()
    in_peers, lines = False, []
    for line in text.splitlines():  # uncomment `# key = value`, except the routes/profiles example
        in_peers = line.startswith("# [") or (in_peers and line.startswith("# "))
        if re.match(r"^# [a-z_]+ = ", line) and not in_peers:
            line = line[2:]
        lines.append(line)
    uncommented = "\n".join(lines)
    parsed = tomllib.loads(uncommented)  # the example is valid TOML once uncommented
    assert parsed["scp"]["port"] == 11112
    for section in Settings.model_fields:
        assert f"[{section}]" in text or f"{section} =" in text
    again = run_cli("config", "init", str(tmp_path / "kneenode.toml"))
    assert again.returncode != 0 and "exists" in again.stderr


def test_settings_toml_round_trips(tmp_path):
    from kneenode.configfile import settings_toml

    s = Settings(delivery={"destinations": [{"ae_title": "PACS", "host": "10.0.0.2", "port": 104}]},
                 routes=[{"name": "mr", "calling_ae": ["MR1"], "hosts": ["10.1.0.0/16"],
                          "quiet_seconds": 9, "profile": "cascade"}],
                 profiles={"cascade": {"segment": {"configuration": "3d_cascade_fullres"}}},
                 jobs={"stage_time_limits": {"segment": 60.0}})
    path = tmp_path / "k.toml"
    path.write_text(settings_toml(s))
    assert load_settings(path) == s
