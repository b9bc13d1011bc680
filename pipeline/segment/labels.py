"""Native model labels -> canonical kneenode labels, by the label NAMES in dataset.json.

Why names and not a fixed index table: every nnU-Net model numbers its labels its own way (the
public Dataset500_KneeMRI model has 1 = patellar cartilage, 7 = femur), but its ``dataset.json``
names them. A name is reduced to a set of concepts (bone, tissue, side), robust to case,
underscores, camelCase, abbreviations and plurals, and matched to the canonical structures of
DESIGN.md. A name that matches nothing, two names that match the same structure, or a structure no
label provides is a CONFIG_ERROR: a silently wrong map would corrupt every measurement.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

from kneenode.errors import ErrorCode, NodeError
from pipeline.labels import TISSUE_NAMES

#: Canonical labels (DESIGN.md).
CANONICAL: dict[int, str] = TISSUE_NAMES

#: Canonical labels of the three bones (holes are filled in post-processing).
BONES: tuple[int, ...] = (1, 2, 3)

# word -> concept; words not listed make a name unmappable.
_SYNONYMS: dict[str, str] = {}
for _concept, _words in {
    "femur": "femur femoral fem femoris femurs",
    "tibia": "tibia tibial tib tibiae tibias",
    "patella": "patella patellar pat patellae patellas",
    "cartilage": "cartilage cartilages cart carts cartilago cartl",
    "meniscus": "meniscus menisci meniscal men menisc meniscuses",
    "medial": "medial med",
    "lateral": "lateral lat",
}.items():
    for _w in _words.split():
        _SYNONYMS[_w] = _concept
_IGNORED_WORDS = {"bone", "bones", "the", "of", "plateau", "label", "mask", "structure"}

# canonical label -> the concept set that names it
_SIGNATURES: dict[frozenset[str], int] = {
    frozenset({"femur"}): 1,
    frozenset({"tibia"}): 2,
    frozenset({"patella"}): 3,
    frozenset({"femur", "cartilage"}): 4,
    frozenset({"tibia", "cartilage", "medial"}): 5,
    frozenset({"tibia", "cartilage", "lateral"}): 6,
    frozenset({"patella", "cartilage"}): 7,
    frozenset({"meniscus", "medial"}): 8,
    frozenset({"meniscus", "lateral"}): 9,
}


def name_concepts(name: str) -> frozenset[str] | None:
    """Reduce a label name to its concepts, or None when a word is not understood.

    >>> sorted(name_concepts("Medial_Tibial_Cart"))
    ['cartilage', 'medial', 'tibia']
    """
    spaced = re.sub(r"([a-z])([A-Z])", r"\1 \2", name)
    words = [w for w in re.split(r"[^a-z0-9]+", spaced.lower()) if w]
    concepts: set[str] = set()
    for word in words:
        if word in _IGNORED_WORDS:
            continue
        concept = _SYNONYMS.get(word)
        if concept is None and word.endswith("s"):
            concept = _SYNONYMS.get(word[:-1])
        if concept is None:
            return None
        concepts.add(concept)
    return frozenset(concepts) if concepts else None


def canonical_for_name(name: str) -> int | None:
    """The canonical label a native label name denotes, or None."""
    concepts = name_concepts(name)
    return None if concepts is None else _SIGNATURES.get(concepts)


def native_to_canonical(labels: Mapping[str, object]) -> dict[int, int]:
    """Map native label values to canonical ones from dataset.json ``labels``.

    Parameters
    ----------
    labels
        The ``labels`` dict of a model's dataset.json (name -> integer value); ``background``
        (value 0) and ``ignore`` are skipped.

    Returns
    -------
    dict
        native value -> canonical value, covering all nine canonical structures.

    Raises
    ------
    NodeError
        CONFIG_ERROR naming the label that cannot be mapped, the duplicate, or what is missing.
    """
    mapping: dict[int, int] = {}
    seen: dict[int, str] = {}
    for name, value in labels.items():
        if name.strip().lower() in {"background", "ignore"}:
            continue
        if isinstance(value, (list, tuple)) or not isinstance(value, int) or value <= 0:
            raise NodeError(
                ErrorCode.CONFIG_ERROR,
                f"model label {name!r} has value {value!r}: only integer labels are supported "
                "(region-based nnU-Net models are not)",
            )
        canonical = canonical_for_name(name)
        if canonical is None:
            raise NodeError(
                ErrorCode.CONFIG_ERROR,
                f"model label {name!r} (value {value}) does not name a known knee structure "
                f"({', '.join(CANONICAL.values())})",
            )
        if canonical in seen:
            raise NodeError(
                ErrorCode.CONFIG_ERROR,
                f"model labels {seen[canonical]!r} and {name!r} both name {CANONICAL[canonical]}",
            )
        seen[canonical] = name
        mapping[value] = canonical
    missing = [CANONICAL[c] for c in CANONICAL if c not in seen]
    if missing:
        raise NodeError(ErrorCode.CONFIG_ERROR, f"the model has no label for: {', '.join(missing)}")
    return mapping


def lookup_table(mapping: Mapping[int, int]) -> np.ndarray:
    """A uint8 lookup table ``lut[native] = canonical`` (0 for background and unmapped values)."""
    lut = np.zeros(max(mapping) + 1 if mapping else 1, dtype=np.uint8)
    for native, canonical in mapping.items():
        lut[native] = canonical
    return lut


#: Native labels of the public Dataset500_KneeMRI model (DESIGN.md), used by the phantom demo
#: model's dataset.json so that the name-based remap is exercised, never as a lookup table.
PUBLIC_MODEL_LABELS: dict[str, int] = {
    "patellar_cart": 1,
    "femoral_cart": 2,
    "medial_tibial_cart": 3,
    "lateral_tibial_cart": 4,
    "medial_meniscus": 5,
    "lateral_meniscus": 6,
    "femur": 7,
    "tibia": 8,
    "patella": 9,
}
