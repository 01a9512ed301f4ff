"""EfficientPS' detectron2 components; importing this module registers them."""

from . import backbone, heads, meta_arch  # noqa: F401  (registers the components)
from .inplace_abn import InPlaceABN, convert_to_inplace_abn
from .layers import SeparableConv2d, fold_batchnorm

__all__ = ["InPlaceABN", "SeparableConv2d", "convert_to_inplace_abn", "fold_batchnorm"]
