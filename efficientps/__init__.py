"""EfficientPS panoptic segmentation as a detectron2 plugin.

Importing this package registers its components in detectron2's registries (backbones, heads,
meta-architecture) and its datasets in DatasetCatalog. The offline PQ command is the separate
``efficientps_pq`` package (no torch, no detectron2).
"""

from . import data, modeling  # noqa: F401  (registers the components and datasets)
from .config import add_efficientps_config

__all__ = ["add_efficientps_config"]
