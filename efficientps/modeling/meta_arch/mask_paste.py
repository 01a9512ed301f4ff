"""Paste per-detection mask logits (R x h x w) into full-image logits, vectorised.

Bilinear interpolation is separable, so pasting is two batched matrix products with
interpolation matrices that are zero outside each box: exactly ``grid_sample`` (bilinear,
``align_corners=False``, zero padding) of the mask over the image, without an (R, H, W, 2) grid.
Values outside the box are 0, as the panoptic fusion expects of logits.
"""

import torch


def _interpolation_matrix(start, end, mask_size, image_size):
    """(R, image_size, mask_size) bilinear weights from image pixels to mask cells."""
    centers = torch.arange(image_size, device=start.device, dtype=start.dtype) + 0.5
    extent = (end - start).clamp(min=1e-6)
    # Position of each image pixel centre in mask-cell coordinates (cell centres at k + 0.5).
    pos = (centers[None, :] - start[:, None]) / extent[:, None] * mask_size - 0.5
    cells = torch.arange(mask_size, device=start.device, dtype=start.dtype)
    return (1 - (pos[:, :, None] - cells[None, None, :]).abs()).clamp(min=0)


def paste_mask_logits(mask_logits, boxes, height, width):
    """Paste ``mask_logits`` (R, h, w) or (R, 1, h, w) into (R, height, width) image logits.

    Args:
        boxes: (R, 4) float boxes (x0, y0, x1, y1) in output pixels.
    Returns:
        (R, height, width) logits, 0 outside each box.
    """
    if mask_logits.dim() == 4:
        mask_logits = mask_logits[:, 0]
    if mask_logits.shape[0] == 0:
        return mask_logits.new_zeros(0, height, width)
    boxes = boxes.to(mask_logits.dtype)
    rows = _interpolation_matrix(boxes[:, 1], boxes[:, 3], mask_logits.shape[1], height)
    cols = _interpolation_matrix(boxes[:, 0], boxes[:, 2], mask_logits.shape[2], width)
    return rows @ mask_logits @ cols.transpose(1, 2)
