"""kneenode: a DICOM network node for knee MRI (composition root: settings, CLI, bootstrap)."""

__version__ = "0.1.0"
