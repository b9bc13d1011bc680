"""Write a commented example ``kneenode.toml`` from the settings tree itself.

The example is generated from the field descriptions and defaults in :mod:`kneenode.settings`, so
the documentation of every key cannot drift from the code.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from kneenode.settings import Settings

_REPO = Path(__file__).resolve().parents[1]


def _display_path(path: Path) -> Path:
    """Paths inside the checkout are shown relative to it (the same on every machine)."""
    try:
        return path.resolve().relative_to(_REPO) if path.is_absolute() else path
    except ValueError:
        return path


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, Path):
        return json.dumps(str(value))
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml_value(v)}"
                               for k, v in value.items()) + "}"
    if isinstance(value, BaseModel):
        return _toml_value(value.model_dump(mode="json"))
    return json.dumps(str(value))


def _is_section(info: FieldInfo) -> bool:
    ann = info.annotation
    return isinstance(ann, type) and issubclass(ann, BaseModel)


def _emit(model: type[BaseModel], instance: BaseModel, prefix: str, out: list[str]) -> None:
    sections: list[tuple[str, FieldInfo]] = []
    for name, info in model.model_fields.items():
        if _is_section(info):
            sections.append((name, info))
            continue
        value = getattr(instance, name)
        out.append(f"# {info.description or name}")
        if value is None:
            out.append(f"# {name}: unset by default")
        elif isinstance(value, list) and value and isinstance(value[0], BaseModel):
            out.append(f"# {name}: see the documentation")
        elif isinstance(value, list) and not value and name == "peers":
            out.append("# [[scp.peers]]  (repeat per peer)")
            out.append('# ae_title = "PACS"')
            out.append('# hosts = ["10.0.0.0/24"]')
            out.append("# quiet_seconds = 30")
            out.append('# completion_policy = "auto"')
        else:
            out.append(f"# {name} = {_toml_value(value)}")
        out.append("")
    for name, info in sections:
        full = f"{prefix}.{name}" if prefix else name
        out.append(f"[{full}]")
        out.append(f"# {info.description or name}")
        out.append("")
        ann = info.annotation
        assert isinstance(ann, type) and issubclass(ann, BaseModel)  # narrowed by _is_section
        _emit(ann, getattr(instance, name), full, out)


def example_config() -> str:
    """The commented example configuration (every key, its default, its meaning)."""
    out = [
        "# kneenode.toml: every key with its default, commented out. Uncomment what you change.",
        "# Environment variables override the file: KNEENODE_<SECTION>__<KEY>, e.g.",
        "# KNEENODE_SCP__PORT=4242. Select this file with --config or KNEENODE_CONFIG.",
        "",
    ]
    _emit(Settings, Settings.model_construct(), "", out)
    return "\n".join(out).rstrip() + "\n"


def _rows(model: type[BaseModel], instance: BaseModel, prefix: str) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    for name, info in model.model_fields.items():
        key = f"{prefix}.{name}" if prefix else name
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            rows.extend(_rows(ann, getattr(instance, name), key))
            continue
        value = getattr(instance, name)
        if isinstance(value, Path):
            value = _display_path(value)
        shown = "unset" if value is None else _toml_value(value)
        rows.append((key, shown, info.description or ""))
    return rows


def settings_table() -> str:
    """Markdown table of every settings key, its default and its meaning (for the README)."""
    lines = ["| key | default | meaning |", "| --- | --- | --- |"]
    for key, default, text in _rows(Settings, Settings.model_construct(), ""):
        default = default.replace("|", "\\|")
        if len(default) > 60:
            default = default[:57] + "..."
        lines.append(f"| `{key}` | `{default}` | {text.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


BEGIN, END = "<!-- settings:begin -->", "<!-- settings:end -->"


def with_settings_table(readme: str) -> str:
    """``readme`` with the text between the settings markers replaced by :func:`settings_table`."""
    head, _, rest = readme.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return f"{head}{BEGIN}\n{settings_table()}{END}{tail}"


def settings_toml(settings: Settings) -> str:
    """The full settings as a TOML document (None values left out), e.g. to hand a composed
    configuration to child processes that load their settings from a file."""
    return _table(settings.model_dump(mode="json", exclude_none=True), "").lstrip("\n")


def _table(data: dict[str, Any], prefix: str) -> str:
    scalars, tables, arrays = [], [], []
    for key, value in data.items():
        if isinstance(value, dict):  # a section, or a dict-valued field: both are tables
            tables.append((key, value))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            arrays.append((key, value))
        else:
            bare = re.fullmatch(r"[A-Za-z0-9_-]+", key)  # else quoted ("femur/tibia" ratios)
            scalars.append(f"{key if bare else json.dumps(key)} = {_toml_value(value)}")
    out = ("\n".join(scalars) + "\n") if scalars else ""
    for key, value in tables:
        name = f"{prefix}.{key}" if prefix else key
        out += f"\n[{name}]\n" + _table(value, name)
    for key, items in arrays:
        name = f"{prefix}.{key}" if prefix else key
        for item in items:
            out += f"\n[[{name}]]\n" + _table(item, name)
    return out



ERRORS_BEGIN, ERRORS_END = "<!-- errors:begin -->", "<!-- errors:end -->"


def errors_table() -> str:
    """Markdown table of every job error code, whether it is retried, and its hint."""
    from kneenode.errors import HINTS, PERMANENT, ErrorCode

    lines = ["| code | retried | hint |", "| --- | --- | --- |"]
    for code in ErrorCode:
        lines.append(f"| `{code}` | {'no' if code in PERMANENT else 'yes'} | {HINTS[code]} |")
    return "\n".join(lines) + "\n"


def with_generated_tables(readme: str) -> str:
    """``readme`` with the settings and error-code tables regenerated."""
    text = with_settings_table(readme)
    head, _, rest = text.partition(ERRORS_BEGIN)
    _, _, tail = rest.partition(ERRORS_END)
    return f"{head}{ERRORS_BEGIN}\n{errors_table()}{ERRORS_END}{tail}"


if __name__ == "__main__":  # python -m kneenode.configfile README.md: refresh the table in place
    import sys

    if len(sys.argv) > 1:
        target = Path(sys.argv[1])
        target.write_text(with_generated_tables(target.read_text(encoding="utf-8")), encoding="utf-8")
    else:
        print(settings_table(), end="")
