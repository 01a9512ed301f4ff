"""EfficientPS' detectron2 components; importing this module registers them."""

from . import backbone, heads  # noqa: F401  (registers the backbones and heads)
from .layers import SeparableConv2d, fold_batchnorm

__all__ = ["SeparableConv2d", "fold_batchnorm"]
