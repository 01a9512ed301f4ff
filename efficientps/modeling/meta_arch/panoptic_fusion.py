"""EfficientPS' panoptic fusion (paper Sec. 3.5) on torch tensors.

The algorithm is ``efficientps_runtime.fusion_core``, the one implementation that the model and
the torch-free runtime share (written over a small array namespace; here ``TorchOps`` on the
tensors' device). These are its tensor signatures, as the model, benchmarks and tests call it.
"""

import torch

from efficientps_runtime import fusion_core
from efficientps_runtime.fusion_core import checked_pixel_rule

from .torch_ops import TorchOps

__all__ = ["checked_pixel_rule", "fuse_panoptic", "fused_instance_logits", "overlap_filter"]


def fused_instance_logits(ml_a, ml_b):
    """FL = (sigmoid(ML_A) + sigmoid(ML_B)) * (ML_A + ML_B): agreement amplifies."""
    return fusion_core.fused_instance_logits(TorchOps(ml_a.device), ml_a, ml_b)


def _masks(ops, mask_logits):
    """PastedMasks as they are; an (N, H, W) tensor of pasted logits behind their interface."""
    if isinstance(mask_logits, torch.Tensor):
        return fusion_core.DenseMasks(ops, mask_logits)
    return mask_logits


def overlap_filter(mask_logits, overlap_thresh, order=None):
    """``fusion_core.overlap_filter`` of (N, H, W) pasted logits or ``BoxMaskLogits``; ``order``
    None visits the detections in their order. Returns (owner (H, W), kept (K,))."""
    device = mask_logits.device if isinstance(mask_logits, torch.Tensor) else mask_logits.ops.device
    ops = TorchOps(device)
    masks = _masks(ops, mask_logits)
    order = ops.arange(0, len(masks), ops.int64) if order is None else order
    return fusion_core.overlap_filter(ops, masks, overlap_thresh, order)


def fuse_panoptic(sem_logits, mask_logits, boxes, classes, scores, **settings):
    """``fusion_core.fuse`` on tensors: ``mask_logits`` (N, H, W) pasted logits or
    ``BoxMaskLogits``; ``settings``: stuff_channels, thing_channels, score_thresh,
    overlap_thresh, stuff_area, mask_logit_scale, pixel_rule (see there).

    Returns (panoptic (H, W) int32, segments_info)."""
    ops = TorchOps(sem_logits.device)
    masks = _masks(ops, mask_logits)
    return fusion_core.fuse(ops, sem_logits, masks, boxes, classes, scores, **settings)
