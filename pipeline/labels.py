"""The node's canonical labels (DESIGN.md), in one table every stage shares."""

from __future__ import annotations

#: Canonical label -> result-key prefix (``<prefix>_ml`` volumes, encoders, phantom truth).
TISSUE_KEYS: dict[int, str] = {
    1: "femur",
    2: "tibia",
    3: "patella",
    4: "fem_cart",
    5: "med_tib_cart",
    6: "lat_tib_cart",
    7: "pat_cart",
    8: "med_men",
    9: "lat_men",
}

#: Canonical label -> the structure's name (what model label names are matched against).
TISSUE_NAMES: dict[int, str] = {
    1: "femur",
    2: "tibia",
    3: "patella",
    4: "femoral cartilage",
    5: "medial tibial cartilage",
    6: "lateral tibial cartilage",
    7: "patellar cartilage",
    8: "medial meniscus",
    9: "lateral meniscus",
}
