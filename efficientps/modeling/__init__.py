"""EfficientPS' detectron2 components; importing this module registers them."""

from . import anchors, backbone, heads, meta_arch  # noqa: F401  (registers the components)
from .inplace_abn import InPlaceABN, convert_to_inplace_abn, refresh_small_channels
from .layers import ConvNormAct, SeparableConv2d, configure_inference, fold_for_export

__all__ = [
    "ConvNormAct",
    "InPlaceABN",
    "SeparableConv2d",
    "configure_inference",
    "fold_for_export",
    "convert_to_inplace_abn",
    "refresh_small_channels",
]
