"""Panoptic quality, mIoU and AP for EfficientPS; ``python -m efficientps.evaluation`` offline.

The PQ pieces need only NumPy and numba; the detectron2 evaluator is imported on first use, so
that the offline command starts without torch.
"""

import importlib

from .panoptic_png import read_panoptic_png, write_panoptic_png
from .panoptic_quality import PanopticFormatError, PQAccumulator, format_table

_DETECTRON2_PARTS = {
    "EfficientPSEvaluator": ".panoptic_evaluator",
    "build_evaluator": ".build",
}


def __getattr__(name):
    if name in _DETECTRON2_PARTS:
        return getattr(importlib.import_module(_DETECTRON2_PARTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "EfficientPSEvaluator",
    "PQAccumulator",
    "PanopticFormatError",
    "build_evaluator",
    "format_table",
    "read_panoptic_png",
    "write_panoptic_png",
]
