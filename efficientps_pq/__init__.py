"""Panoptic quality of COCO-panoptic folders, without torch or detectron2.

    python -m efficientps_pq --gt-json G --gt-dir GD --pred-json P --pred-dir PD [--output R]

Part of the efficientps distribution, kept apart from the ``efficientps`` package (which
registers detectron2 components on import and so needs torch and detectron2, ~6 s of imports)
so that the offline command starts in about 0.5 s. NumPy, numba and imagecodecs only.

The names below load on first use, so that ``efficientps_pq.panoptic_ids`` (NumPy only, the
COCO-panoptic colour encoding that ``efficientps_runtime`` writes) imports neither numba nor
imagecodecs.
"""

import importlib

_HOMES = {
    "id_to_rgb": "panoptic_ids",
    "rgb_to_id": "panoptic_ids",
    "read_panoptic_png": "panoptic_png",
    "write_panoptic_png": "panoptic_png",
    "PanopticFormatError": "panoptic_quality",
    "PQAccumulator": "panoptic_quality",
    "format_table": "panoptic_quality",
}

__all__ = sorted(_HOMES)


def __getattr__(name):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
