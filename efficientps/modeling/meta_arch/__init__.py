"""The EfficientPS meta-architecture and its panoptic fusion; importing registers the model."""

from .efficientps import EfficientPS
from .fusion_module import EfficientPSPanopticFusion
from .learned_fusion import LearnedDetectionQuality
from .mask_paste import BoxMaskLogits, paste_mask_logits
from .panoptic_fusion import fuse_panoptic, fused_instance_logits, overlap_filter
from .tta import EfficientPSWithTTA

__all__ = [
    "BoxMaskLogits",
    "EfficientPS",
    "EfficientPSPanopticFusion",
    "EfficientPSWithTTA",
    "LearnedDetectionQuality",
    "fuse_panoptic",
    "fused_instance_logits",
    "overlap_filter",
    "paste_mask_logits",
]
