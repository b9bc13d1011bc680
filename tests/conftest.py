"""Shared fixtures: real kneenode processes, stopped by PID at the end of each test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.node import Node


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator[Callable[..., Node]]:
    """Start ``kneenode scp`` (or another command) with a config dict; all stopped afterwards."""
    nodes: list[Node] = []

    def make(config: dict[str, Any] | None = None, command: str = "scp", name: str = "node",
             start: bool = True) -> Node:
        node = Node(root=tmp_path / name, config=config or {}, command=command)
        node.root.mkdir(parents=True, exist_ok=True)
        nodes.append(node)
        return node.start() if start else node

    yield make
    for node in nodes:
        node.stop()
