"""Paste per-detection mask logits (R x h x w) into full-image logits, on torch tensors.

The pasting is ``efficientps_runtime.fusion_core``'s (one implementation for the model and the
runtime): bilinear interpolation is separable, so pasting is two batched matrix products with
interpolation matrices that are zero outside each box -- exactly ``grid_sample`` (bilinear,
``align_corners=False``, zero padding) of the mask over the image, without an (R, H, W, 2) grid.
Bilinear weights reach half a mask cell (box size / 56 for 28x28 masks) beyond the box; beyond
that the pasted logits are 0 and the panoptic fusion lets the instance compete nowhere there.

``BoxMaskLogits`` gives the same values on demand (a box crop, or a list of pixels), so that
inference never holds the (R, H, W) float maps: 50 detections at 1024x2048 are 400 MB.
"""

from efficientps_runtime.fusion_core import PastedMasks, paste_dense

from .torch_ops import TorchOps


def _per_detection(mask_logits):
    return mask_logits[:, 0] if mask_logits.dim() == 4 else mask_logits


def paste_mask_logits(mask_logits, boxes, height, width):
    """Paste ``mask_logits`` (R, h, w) or (R, 1, h, w) into (R, height, width) image logits.

    Args:
        boxes: (R, 4) float boxes (x0, y0, x1, y1) in output pixels.
    Returns:
        (R, height, width) logits, 0 beyond half a mask cell around each box.
    """
    mask_logits = _per_detection(mask_logits)
    if mask_logits.shape[0] == 0:
        return mask_logits.new_zeros(0, height, width)
    boxes = boxes.to(mask_logits.dtype)
    return paste_dense(TorchOps(mask_logits.device), mask_logits, boxes, height, width)


class BoxMaskLogits(PastedMasks):
    """``paste_mask_logits(mask_logits, boxes, height, width)`` computed where it is read
    (``window``, ``crop``, ``at``; ``dense()`` materialises it)."""

    def __init__(self, mask_logits, boxes, height, width):
        mask_logits = _per_detection(mask_logits)
        super().__init__(TorchOps(mask_logits.device), mask_logits, boxes, height, width)
