"""Dataset registrations; importing registers the built-in names (see builtin.py)."""

from . import builtin  # noqa: F401  (registers synthetic, KITTI and Vistas datasets)
from .builtin import register_custom_panoptic, register_synthetic_panoptic
from .cityscapes import cityscapes_categories, register_cityscapes_panoptic
from .coco_panoptic import DatasetFormatError, load_coco_panoptic, register_coco_panoptic
from .kitti import register_kitti_panoptic
from .mapillary_vistas import register_mapillary_vistas

__all__ = [
    "DatasetFormatError",
    "cityscapes_categories",
    "load_coco_panoptic",
    "register_cityscapes_panoptic",
    "register_coco_panoptic",
    "register_kitti_panoptic",
    "register_mapillary_vistas",
    "register_custom_panoptic",
    "register_synthetic_panoptic",
]
