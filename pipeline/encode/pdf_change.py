"""The change section of the PDF report: a table per region and a trend chart per region.

Drawn on its own page after page one when ``results["change"]`` compared the exam with a prior;
page one then carries one line (what was compared, or why nothing was). Reads only the change
report (docs/change.md), so the numbers on the page are those of results.json and the SR.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from typing import Any

import matplotlib.dates as mdates
from matplotlib.figure import Figure
from matplotlib.transforms import Bbox

from pipeline.encode.common import COLORS, SUBREGIONS, TISSUES

_FULL_AXES = Bbox.from_bounds(0, 0, 1, 1)
_NAMES = {key: text for key, text in (*TISSUES.values(), *SUBREGIONS.values())}
_LABELS = {key: label for label, (key, _) in (*TISSUES.items(), *SUBREGIONS.items())}
_SHORT = {
    "ant_fem_cart": "Anterior femoral", "med_wb_fem_cart": "Medial WB femoral",
    "lat_wb_fem_cart": "Lateral WB femoral", "med_post_fem_cart": "Medial posterior femoral",
    "lat_post_fem_cart": "Lateral posterior femoral", "med_tib_cart": "Medial tibial",
    "lat_tib_cart": "Lateral tibial", "pat_cart": "Patellar",
}
FLAG_COLOUR = "#f6c6c6"
LINE = 0.0165


def change_of(results: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """results.json's change report (any status), or None when none was computed."""
    change = results.get("change")
    return change if isinstance(change, Mapping) else None


def summary_line(change: Mapping[str, Any]) -> str:
    """The one line of page one: the comparison and what is flagged, or why there is none."""
    if change.get("status") != "compared":
        return str(change.get("reason") or f"no comparison ({change.get('status')})")
    prior = change["prior"]
    flagged = len(change.get("flagged") or [])
    return (f"prior of {prior['study_date']} ({change.get('interval_days')} days earlier): "
            f"{flagged} change(s) beyond the SDC, see page 2")


def _fmt(value: Any, digits: int, sign: bool = False) -> str:
    if value is None:
        return "-"
    shown = round(float(value), digits) + 0.0  # no "-0.00"
    return f"{shown:+.{digits}f}" if sign else f"{shown:.{digits}f}"


def _table(fig: Figure, top: float, cols: list[str], widths: list[float], rows: list[list[str]],
           keys: list[str], flagged: list[bool]) -> float:
    """A table with a colour swatch per structure and flagged rows shaded; returns the y below."""
    height = LINE * (len(rows) + 1)
    ax = fig.add_axes((0.06, top - height, 0.88, height))
    ax.axis("off")
    scale = sum(widths) / 0.88
    table = ax.table(cellText=[["", *r] for r in rows], colLabels=cols, cellLoc="center",
                     colWidths=[w / scale for w in widths], bbox=_FULL_AXES)
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    for j in range(len(cols)):
        table[0, j].set_facecolor("#e8e8e8")
    for i, (key, flag) in enumerate(zip(keys, flagged, strict=True), start=1):
        colour = COLORS.get(_LABELS.get(key, 0))
        if colour is not None:
            table[i, 0].set_facecolor(tuple(c / 255 for c in colour))
        table[i, 1].get_text().set_horizontalalignment("left")
        table[i, 1].PAD = 0.02
        if flag:
            for j in range(1, len(cols)):
                table[i, j].set_facecolor(FLAG_COLOUR)
                table[i, j].get_text().set_weight("bold")
    return top - height - 0.012


#: (section of the report, key field, title, unit, prior/current/change fields, digits, SDC field)
_TABLES = (
    ("thickness", "region", "Mean cartilage thickness", "mm",
     ("prior_mm", "current_mm", "change_mm"), 2, "sdc_mm", "SDC (mm)"),
    ("volume", "tissue", "Cartilage volume", "mm3",
     ("prior_mm3", "current_mm3", "change_mm3"), 0, "sdc_percent", "SDC (%)"),
)


def _change_table(fig: Figure, top: float, change: Mapping[str, Any], spec: tuple[Any, ...]
                  ) -> float:
    """One of :data:`_TABLES`: prior, current, change, %/year, SDC and flag per structure."""
    section, key, title, unit, (prior, current, delta), digits, sdc, sdc_title = spec
    rows, keys, flags = [], [], []
    for e in change.get(section, []):
        rows.append([_NAMES.get(e[key], e[key]), _fmt(e[prior], digits), _fmt(e[current], digits),
                     _fmt(e[delta], digits, True), _fmt(e["change_percent_per_year"], 1, True),
                     _fmt(e[sdc], 2 if digits else 1),
                     "beyond SDC" if e["flagged"] else ("-" if e[delta] is None else "no")])
        keys.append(e[key])
        flags.append(bool(e["flagged"]))
    cols = ["", title, f"Prior ({unit})", f"Current ({unit})", f"Change ({unit})",
            "Change (%/year)", sdc_title, "Flag"]
    return _table(fig, top, cols, [0.03, 0.30, 0.095, 0.105, 0.105, 0.13, 0.085, 0.10],
                  rows, keys, flags)


def _trend(fig: Figure, box: tuple[float, float, float, float], region: str,
           change: Mapping[str, Any], entry: Mapping[str, Any]) -> None:
    """One region's mean thickness across every exam; the band is prior +- SDC."""
    points = [(date.fromisoformat(str(p["study_date"])), p["thickness_mm"].get(region), p["current"])
              for p in change.get("trend", [])]
    points = [p for p in points if p[1] is not None]
    ax = fig.add_axes(box)
    colour = tuple(c / 255 for c in COLORS.get(_LABELS.get(region, 0), (80, 80, 80)))
    flagged = bool(entry.get("flagged"))
    ax.set_title(_SHORT.get(region, region) + ("  (beyond SDC)" if flagged else ""),
                 fontsize=7.5, color="#a00000" if flagged else "black",
                 weight="bold" if flagged else "normal")
    ax.tick_params(labelsize=6, length=2)
    ax.grid(alpha=0.3, linewidth=0.5)
    if not points:
        ax.text(0.5, 0.5, "not measured", ha="center", va="center", fontsize=7,
                transform=ax.transAxes, color="grey")
        ax.set_xticks([])
        ax.set_yticks([])
        return
    xs = [p[0] for p in points]
    ys = [float(p[1]) for p in points]
    prior, sdc = entry.get("prior_mm"), float(entry.get("sdc_mm") or 0.0)
    if prior is not None and sdc:
        ax.axhspan(prior - sdc, prior + sdc, color="#d8d8d8", alpha=0.6, linewidth=0)
    ax.plot(xs, ys, "-", color="#404040", linewidth=0.8)
    ax.scatter(xs, ys, s=[28 if p[2] else 14 for p in points], color=[colour] * len(xs),
               edgecolors="black", linewidths=0.5, zorder=3)
    span = max(max(ys) - min(ys), 2 * sdc, 0.2)
    mid = (max(ys) + min(ys)) / 2
    ax.set_ylim(mid - 0.75 * span, mid + 0.75 * span)
    ax.set_ylabel("mm", fontsize=6)
    if len(set(xs)) == 1:
        ax.set_xticks(xs)
    ax.xaxis.set_major_locator(mdates.AutoDateLocator(minticks=2, maxticks=4))
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%Y-%m"))


def draw_change_page(fig: Figure, top: float, change: Mapping[str, Any],
                     bottom: float = 0.08) -> None:
    """The change page's content below its banners: comparison, two tables, eight trends."""
    prior, current = change["prior"], change["current"]
    lines = [
        (f"Current exam {current['study_date']} compared with the prior of {prior['study_date']} "
         f"({change.get('interval_days')} days, {float(change.get('interval_years') or 0):.2f} "
         f"years); knee {change.get('side') or 'unknown'}, same model for both exams."),
        ("Change = current - prior (negative = loss); %/year of the prior value. Shaded rows: "
         "|change| beyond the smallest detectable change (SDC)."),
    ]
    y = top - 0.012
    for line in lines:
        fig.text(0.06, y, line, fontsize=8)
        y -= 0.015
    y -= 0.006
    for spec in _TABLES:
        y = _change_table(fig, y, change, spec)
    fig.text(0.06, y - 0.006, "Trend per region: mean thickness at every exam of this knee "
             "(large dot: current; band: prior +- SDC)", fontsize=10, weight="bold")
    entries = {t["region"]: t for t in change.get("thickness", [])}
    regions = list(entries) or list(_SHORT)
    cols, rows_n = 2, (len(regions) + 1) // 2
    area_top = y - 0.02
    cell = (area_top - bottom) / max(rows_n, 1)
    for i, region in enumerate(regions):
        r, c = divmod(i, cols)
        box = (0.11 + c * 0.45, area_top - (r + 1) * cell + 0.03, 0.36, cell - 0.05)
        _trend(fig, box, region, change, entries.get(region, {}))
