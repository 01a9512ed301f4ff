"""EfficientPS' heads; importing registers them in detectron2's head registries."""

from .instance_head import (
    EfficientPSBoxHead,
    EfficientPSMaskHead,
    EfficientPSROIHeads,
    EfficientPSRPNHead,
)
from .semantic_head import DPC, LSFE, EfficientPSSemSegHead, hard_pixel_cross_entropy

__all__ = [
    "DPC",
    "LSFE",
    "EfficientPSBoxHead",
    "EfficientPSMaskHead",
    "EfficientPSROIHeads",
    "EfficientPSRPNHead",
    "EfficientPSSemSegHead",
    "hard_pixel_cross_entropy",
]
