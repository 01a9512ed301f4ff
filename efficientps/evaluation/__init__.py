"""Panoptic quality, mIoU and AP for EfficientPS inside detectron2's evaluation loop.

The PQ arithmetic, the panoptic PNG reader/writer and the offline command
(``python -m efficientps_pq``) live in the ``efficientps_pq`` package of this distribution,
which needs neither torch nor detectron2; they are re-exported here.
"""

from efficientps_pq import (
    PanopticFormatError,
    PQAccumulator,
    format_table,
    read_panoptic_png,
    write_panoptic_png,
)

from .build import build_evaluator
from .panoptic_evaluator import EfficientPSEvaluator

__all__ = [
    "EfficientPSEvaluator",
    "PQAccumulator",
    "PanopticFormatError",
    "build_evaluator",
    "format_table",
    "read_panoptic_png",
    "write_panoptic_png",
]
