"""The export's linear logit resampling (torch trilinear) against nnU-Net's own export."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from nnunetv2.inference.export_prediction import (
    convert_predicted_logits_to_segmentation_with_correct_shape,
)

from kneenode.settings import SegmentSettings
from pipeline.phantom import grid_image, make_phantom
from pipeline.segment import load_model
from pipeline.segment.predict import (
    linear_resample_logits,
    logits_to_native,
    preprocess,
    sliding_window_logits,
)
from pipeline.series.reorient import plan_reorientation


def test_fast_export_equals_nnunet_export():
    # the demo cascade's lower stage: one network, whose 1.4 mm logits the export must resample
    model = load_model(SegmentSettings(device="cpu", cpu_threads=1)).previous
    assert model is not None
    ph = make_phantom(78001, "small", side="right", orientation="coronal")  # 0.7 x 0.7 x 0.9 mm
    image = grid_image(ph.image.astype(np.float32), ph.grid)
    work = plan_reorientation(image, str(model.card.extra["input_orientation"])).apply(image)
    array = sitk.GetArrayFromImage(work)
    data, props = preprocess(model, array, tuple(reversed(work.GetSpacing())))
    logits = sliding_window_logits(model, data)
    assert tuple(logits.shape[1:]) != tuple(props["shape_after_cropping_and_before_resampling"])
    assert linear_resample_logits(model, logits, props) is not None  # the fast path applies
    ours = logits_to_native(model, logits, props)
    reference = convert_predicted_logits_to_segmentation_with_correct_shape(
        logits.clone(), model.plans_manager, model.configuration_manager, model.label_manager,
        props, return_probabilities=False, num_threads_torch=1)
    reference = np.asarray(reference)
    assert ours.shape == reference.shape
    fg = (ours > 0) | (reference > 0)
    agree = (ours == reference)[fg].mean()
    print(f"agreement on foreground: {agree:.5f}")
    assert agree > 0.995, agree  # only ties at boundaries may differ
