"""Name-based native -> canonical label mapping, and the post-processing of label maps."""

from __future__ import annotations

import random

import numpy as np
import pytest

from kneenode.errors import ErrorCode, NodeError
from pipeline.segment.labels import (
    CANONICAL,
    PUBLIC_MODEL_LABELS,
    canonical_for_name,
    lookup_table,
    native_to_canonical,
)
from pipeline.segment.postprocess import postprocess


def test_public_model_labels_map_to_canonical():
    mapping = native_to_canonical({"background": 0, **PUBLIC_MODEL_LABELS})
    assert mapping == {1: 7, 2: 4, 3: 5, 4: 6, 5: 8, 6: 9, 7: 1, 8: 2, 9: 3}
    lut = lookup_table(mapping)
    assert lut[7] == 1 and lut[1] == 7 and lut[0] == 0


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("Femur", 1),
        ("femur_bone", 1),
        ("TIBIA", 2),
        ("Patella", 3),
        ("FemoralCartilage", 4),
        ("fem_cart", 4),
        ("Femoral Cartilage", 4),
        ("med_tib_cart", 5),
        ("Medial-Tibial-Cartilage", 5),
        ("tibial_cartilage_medial", 5),
        ("LateralTibialCartilage", 6),
        ("lat tib cart", 6),
        ("patellar_cartilage", 7),
        ("pat_cart", 7),
        ("medial_meniscus", 8),
        ("MedialMeniscus", 8),
        ("med_men", 8),
        ("lateral menisci", 9),
        ("meniscus_lateral", 9),
    ],
)
def test_synonyms(name, canonical):
    assert canonical_for_name(name) == canonical


@pytest.mark.parametrize("name", ["ACL", "tibial_cart", "meniscus", "femur tibia", "fibula", ""])
def test_unknown_or_ambiguous_names(name):
    assert canonical_for_name(name) is None


def test_mapping_does_not_depend_on_numbering():
    names = list(PUBLIC_MODEL_LABELS)
    random.Random(4).shuffle(names)
    labels = {n: i + 1 for i, n in enumerate(names)}
    mapping = native_to_canonical(labels)
    assert {mapping[v] for v in labels.values()} == set(CANONICAL)
    for n, v in labels.items():
        assert mapping[v] == canonical_for_name(n)


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"ACL": 10}, "ACL"),
        ({"Femur": 10}, "both name femur"),
        ({"femur": None}, "no label for: femur"),
        ({"femur": [7, 8]}, "region-based"),
    ],
)
def test_bad_label_sets_are_config_errors(change, needle):
    labels: dict = {"background": 0, **PUBLIC_MODEL_LABELS}
    for k, v in change.items():
        if v is None:
            labels.pop(k)
        else:
            labels[k] = v
    with pytest.raises(NodeError) as err:
        native_to_canonical(labels)
    assert err.value.code == ErrorCode.CONFIG_ERROR and needle in err.value.message


def test_postprocess_keeps_largest_component_per_structure():
    labels = np.zeros((20, 20, 20), np.uint8)
    labels[2:10, 2:10, 2:10] = 1  # femur, main body
    labels[15:17, 15:17, 15:17] = 1  # island -> removed
    labels[12:14, 2:6, 2:6] = 8  # meniscus main
    labels[18, 18, 2] = 8  # single voxel island -> removed
    out = postprocess(labels)
    assert (out == 1).sum() == 8**3 and out[16, 16, 16] == 0
    assert (out == 8).sum() == 2 * 4 * 4 and out[18, 18, 2] == 0
    assert labels[16, 16, 16] == 1  # input untouched


def test_postprocess_keeps_a_structure_split_in_two_halves():
    labels = np.zeros((20, 20, 20), np.uint8)
    labels[2:6, 2:6, 2:6] = 9  # lateral meniscus, anterior half (64 voxels)
    labels[2:6, 10:14, 2:5] = 9  # posterior half (48 voxels) -> kept (>= 20 % of the largest)
    labels[15, 15, 15] = 9  # a stray voxel -> removed
    out = postprocess(labels)
    assert (out == 9).sum() == 64 + 48 and out[15, 15, 15] == 0
    strict = postprocess(labels, keep_fraction=0)
    assert (strict == 9).sum() == 64


def test_postprocess_gives_a_misnamed_half_to_the_structure_it_is_attached_to():
    """A horn of the lateral meniscus called medial joins the lateral meniscus, not background."""
    labels = np.zeros((20, 30, 20), np.uint8)
    labels[2:6, 2:8, 2:6] = 8  # medial meniscus (96 voxels)
    labels[2:6, 14:24, 2:6] = 9  # lateral meniscus (160 voxels)
    labels[2:6, 24:26, 2:4] = 8  # its horn, named medial (16 voxels, touches the lateral one)
    labels[15, 15, 15] = 8  # a stray medial voxel touching nothing -> background
    labels[10:12, 2:8, 2:6] = 5  # medial tibial cartilage (48 voxels)
    labels[10:12, 14:24, 2:6] = 6  # lateral tibial cartilage (80 voxels)
    labels[12, 14:16, 2:4] = 5  # a piece named medial on the lateral one -> lateral
    out = postprocess(labels)
    assert (out == 9).sum() == 160 + 16 and (out[2:6, 24:26, 2:4] == 9).all()
    assert (out == 8).sum() == 96 and out[15, 15, 15] == 0
    assert (out == 6).sum() == 80 + 4 and (out == 5).sum() == 48
    alone = postprocess(labels, partners={})
    assert (alone == 9).sum() == 160 and (alone[2:6, 24:26, 2:4] == 0).all()


def test_postprocess_fills_bone_holes_but_not_other_structures():
    labels = np.zeros((20, 20, 20), np.uint8)
    labels[2:12, 2:12, 2:12] = 2
    labels[5:8, 5:8, 5:8] = 0  # marrow hole in tibia -> filled
    labels[9, 9, 9] = 5  # cartilage voxel enclosed in bone -> kept
    labels[14:19, 14:19, 14:19] = 8
    labels[16, 16, 16] = 0  # hole in a meniscus -> not filled (not a bone)
    out = postprocess(labels)
    assert (out[5:8, 5:8, 5:8] == 2).all()
    assert out[9, 9, 9] == 5
    assert out[16, 16, 16] == 0
