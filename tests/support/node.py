"""Run a real kneenode process (``kneenode scp`` / ``serve``) for tests, configured by TOML."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kneenode.configfile import toml_document
from tests.support.procs import free_port, start, stop, wait_for

KNEENODE = str(Path(sys.executable).with_name("kneenode"))
REPO = Path(__file__).resolve().parents[2]


def node_env(**extra: str) -> dict[str, str]:
    """The environment for a node under test: the repository root on PYTHONPATH, so the test
    chains (``tests.workers.chains``, ``tests.faults.gated_chain``) load in the node process
    as they do under pytest, which puts the root on ``sys.path`` only for itself."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}


def write_toml(path: Path, config: dict[str, Any]) -> None:
    """Write a nested dict as TOML (dicts are tables, lists of dicts arrays of tables)."""
    path.write_text(toml_document(config), encoding="utf-8")


@dataclass
class Node:
    """A kneenode process under test."""

    root: Path
    config: dict[str, Any]
    command: str = "scp"
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def spool(self) -> Path:
        return self.data_dir / "spool"

    @property
    def config_path(self) -> Path:
        return self.root / "kneenode.toml"

    @property
    def log_path(self) -> Path:
        return self.root / f"{self.command}.log"

    def start(self, timeout: float = 60) -> Node:
        cfg = {"data_dir": str(self.data_dir), **self.config}
        scp = {"host": "127.0.0.1", "port": self.port, **cfg.get("scp", {})}
        cfg["scp"] = scp
        cfg.setdefault("spool", {}).setdefault("min_free_bytes", 0)
        cfg["spool"].setdefault("min_free_percent", 0)
        write_toml(self.config_path, cfg)
        env = node_env(KNEENODE_CONFIG=str(self.config_path))
        # "scp" = the edge alone (--no-jobs); "scp-jobs" = the edge creating jobs in redis
        args = {"scp": ["scp", "--no-jobs"], "scp-jobs": ["scp"]}.get(self.command, [self.command])
        offset = len(self.log())  # a restart appends to the same log: read only what is new
        self.proc = start([KNEENODE, *args], log=self.log_path, env=env)
        # Wait for the node's own "listening" line rather than probing the port: a probe
        # connection would hold an association slot until the ACSE timeout.
        wait_for(lambda: "listening on port" in self.log()[offset:]
                 or "node ready" in self.log()[offset:] or self.proc.poll() is not None,
                 timeout, what="the node to listen")
        if self.proc.poll() is not None:
            raise RuntimeError(f"node exited early:\n{self.log_path.read_text()}")
        return self

    def stop(self) -> int:
        return stop(self.proc) if self.proc else 0

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def versions(self, study_uid: str, series_uid: str) -> list[Path]:
        folder = self.spool / "complete" / study_uid / series_uid
        return sorted(folder.glob("v*")) if folder.exists() else []
