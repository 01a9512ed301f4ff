"""EfficientNet bottom-up backbone and the 2-way FPN; importing registers their builders."""

from .efficientnet import EfficientNet, build_efficientnet_backbone
from .two_way_fpn import (
    TwoWayFPN,
    build_efficientnet_2wayfpn_backbone,
    build_efficientnet_fpn_backbone,
)

__all__ = [
    "EfficientNet",
    "TwoWayFPN",
    "build_efficientnet_backbone",
    "build_efficientnet_2wayfpn_backbone",
    "build_efficientnet_fpn_backbone",
]
