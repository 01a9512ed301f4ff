"""Panoptic quality of COCO-panoptic folders, without torch or detectron2.

    python -m efficientps_pq --gt-json G --gt-dir GD --pred-json P --pred-dir PD [--output R]

Part of the efficientps distribution, kept apart from the ``efficientps`` package (which
registers detectron2 components on import and so needs torch and detectron2, ~6 s of imports)
so that the offline command starts in about 0.5 s. NumPy, numba and imagecodecs only.
"""

from .panoptic_ids import id_to_rgb, rgb_to_id
from .panoptic_png import read_panoptic_png, write_panoptic_png
from .panoptic_quality import PanopticFormatError, PQAccumulator, format_table

__all__ = [
    "PQAccumulator",
    "PanopticFormatError",
    "format_table",
    "id_to_rgb",
    "read_panoptic_png",
    "rgb_to_id",
    "write_panoptic_png",
]
