"""A small summary of nnU-Net's class probabilities, instead of writing probability maps.

QC needs the model's own confidence per structure, not the maps themselves (a full-size map is
classes x voxels floats). On the model's grid, before export, the softmax is taken slab by slab;
per predicted canonical structure we keep the voxel count, the sum of the winning probability and
a 20-bin histogram of it. Any threshold (``qc.uncertain_probability``) and the mean are read off
the histogram later, so the settings can change without re-running the network.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from pipeline.segment.labels import CANONICAL

BINS = 20
_SLAB = 16  # planes of the first spatial axis per softmax (bounds the extra memory)


@torch.inference_mode()
def summarize_logits(logits: torch.Tensor, lut: np.ndarray) -> dict[str, Any]:
    """Per canonical structure: ``voxels``, ``mean`` winning probability and its ``histogram``.

    Parameters
    ----------
    logits
        (native classes, *spatial) on any device, as the sliding window returns them.
    lut
        native -> canonical label table of the model (``LoadedModel.lut``).
    """
    n_native = logits.shape[0]
    table = torch.as_tensor(np.asarray(lut[:n_native], dtype=np.int64), device=logits.device)
    n = len(CANONICAL) + 1
    counts = torch.zeros(n, dtype=torch.float64, device=logits.device)
    sums = torch.zeros(n, dtype=torch.float64, device=logits.device)
    hist = torch.zeros((n, BINS), dtype=torch.float64, device=logits.device)
    for start in range(0, logits.shape[1], _SLAB):
        prob = torch.softmax(logits[:, start : start + _SLAB].float(), dim=0)
        top, winner = prob.max(dim=0)
        label = table[winner].flatten()
        top = top.flatten().double()
        b = torch.clamp((top * BINS).long(), max=BINS - 1)
        counts += torch.bincount(label, minlength=n).double()
        sums += torch.bincount(label, weights=top, minlength=n)
        hist += torch.bincount(label * BINS + b, minlength=n * BINS).double().view(n, BINS)
    out: dict[str, Any] = {"bins": BINS, "structures": {}}
    for c, name in CANONICAL.items():
        k = float(counts[c])
        out["structures"][name] = {
            "voxels": int(k),
            "mean": round(float(sums[c]) / k, 5) if k else None,
            "histogram": [int(v) for v in hist[c].tolist()],
        }
    return out


def fraction_below(histogram: list[int], threshold: float) -> float | None:
    """Share of a structure's voxels whose winning probability is below ``threshold``."""
    total = sum(histogram)
    if total == 0:
        return None
    bins = len(histogram)
    cut = round(threshold * bins)
    return sum(histogram[:cut]) / total
