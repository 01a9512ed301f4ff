"""EfficientPS' detectron2 components; importing this module registers them."""

from . import backbone, heads, meta_arch  # noqa: F401  (registers the components)
from .layers import SeparableConv2d, fold_batchnorm

__all__ = ["SeparableConv2d", "fold_batchnorm"]
