"""Panoptic quality, mIoU and AP for EfficientPS; ``python -m efficientps.evaluation`` offline."""

from .build import build_evaluator
from .panoptic_evaluator import EfficientPSEvaluator, read_panoptic_png, write_panoptic_png
from .panoptic_quality import PanopticFormatError, PQAccumulator, format_table

__all__ = [
    "EfficientPSEvaluator",
    "PQAccumulator",
    "PanopticFormatError",
    "build_evaluator",
    "format_table",
    "read_panoptic_png",
    "write_panoptic_png",
]
