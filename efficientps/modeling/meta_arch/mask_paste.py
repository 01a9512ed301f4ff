"""Paste per-detection mask logits (R x h x w) into full-image logits, vectorised.

Bilinear interpolation is separable, so pasting is two batched matrix products with
interpolation matrices that are zero outside each box: exactly ``grid_sample`` (bilinear,
``align_corners=False``, zero padding) of the mask over the image, without an (R, H, W, 2) grid.
Bilinear weights reach half a mask cell (box size / 56 for 28x28 masks) beyond the box; beyond
that the pasted logits are 0 and the panoptic fusion lets the instance compete nowhere there.

``BoxMaskLogits`` gives the same values on demand (a box crop, or a list of pixels), so that
inference never holds the (R, H, W) float maps: 50 detections at 1024x2048 are 400 MB.
"""

import math

import torch


def _mask_coordinates(pixels, start, end, mask_size):
    """Position of image pixel centres ``pixels`` in mask-cell coordinates (centres at k + 0.5)."""
    extent = (end - start).clamp(min=1e-6)
    return (pixels + 0.5 - start) / extent * mask_size - 0.5


def _interpolation_matrix(start, end, mask_size, first_pixel, end_pixel):
    """(R, end_pixel - first_pixel, mask_size) bilinear weights from image pixels to mask cells."""
    pixels = torch.arange(first_pixel, end_pixel, device=start.device, dtype=start.dtype)
    pos = _mask_coordinates(pixels[None, :], start[:, None], end[:, None], mask_size)
    cells = torch.arange(mask_size, device=start.device, dtype=start.dtype)
    return (1 - (pos[:, :, None] - cells[None, None, :]).abs()).clamp(min=0)


def paste_mask_logits(mask_logits, boxes, height, width):
    """Paste ``mask_logits`` (R, h, w) or (R, 1, h, w) into (R, height, width) image logits.

    Args:
        boxes: (R, 4) float boxes (x0, y0, x1, y1) in output pixels.
    Returns:
        (R, height, width) logits, 0 beyond half a mask cell around each box.
    """
    if mask_logits.dim() == 4:
        mask_logits = mask_logits[:, 0]
    if mask_logits.shape[0] == 0:
        return mask_logits.new_zeros(0, height, width)
    boxes = boxes.to(mask_logits.dtype)
    rows = _interpolation_matrix(boxes[:, 1], boxes[:, 3], mask_logits.shape[1], 0, height)
    cols = _interpolation_matrix(boxes[:, 0], boxes[:, 2], mask_logits.shape[2], 0, width)
    return rows @ mask_logits @ cols.transpose(1, 2)


def _support(start, end, mask_size, length):
    half_cell = max(end - start, 1e-6) / (2 * mask_size)
    first = math.floor(start - half_cell - 0.5) + 1
    stop = math.ceil(end + half_cell - 0.5)
    return slice(min(max(first, 0), length), min(max(stop, 0), length))


class BoxMaskLogits:
    """``paste_mask_logits(mask_logits, boxes, height, width)`` computed where it is read.

    Quacks like the (R, H, W) tensor where the panoptic fusion reads it: ``shape``, ``len``,
    ``crop(r, ys, xs)`` (a box-sized window of detection r) and ``at(rows, ys, xs)`` (values at
    pixel lists). ``dense()`` materialises the full tensor.
    """

    def __init__(self, mask_logits, boxes, height, width):
        if mask_logits.dim() == 4:
            mask_logits = mask_logits[:, 0]
        self.masks = mask_logits
        self.boxes = boxes.to(mask_logits.dtype)
        self.shape = (len(mask_logits), height, width)
        self._host_boxes = None  # read from the device once, for every window

    def __len__(self):
        return self.shape[0]

    def dense(self):
        return paste_mask_logits(self.masks, self.boxes, *self.shape[1:])

    def window(self, row):
        """(ys, xs) slices of the pixels where detection ``row``'s paste can be non-zero.

        Pixel p is reached when its centre lies within half a mask cell of the box:
        start - cell/2 < p + 0.5 < end + cell/2 (cell = box extent / mask size).
        """
        if self._host_boxes is None:
            self._host_boxes = self.boxes.tolist()
        x0, y0, x1, y1 = self._host_boxes[row]
        mask_height, mask_width = self.masks.shape[1:]
        return (
            _support(y0, y1, mask_height, self.shape[1]),
            _support(x0, x1, mask_width, self.shape[2]),
        )

    def crop(self, row, ys: slice, xs: slice):
        """(len(ys), len(xs)) pasted logits of detection ``row`` in the window [ys, xs]."""
        x0, y0, x1, y1 = self.boxes[row]
        mask = self.masks[row]
        rows = _interpolation_matrix(y0[None], y1[None], mask.shape[0], ys.start, ys.stop)[0]
        cols = _interpolation_matrix(x0[None], x1[None], mask.shape[1], xs.start, xs.stop)[0]
        return rows @ mask @ cols.T

    def at(self, rows, ys, xs):
        """Pasted logits of detection ``rows[k]`` at pixel (``ys[k]``, ``xs[k]``), vectorised."""
        boxes = self.boxes[rows]
        height, width = self.masks.shape[1:]
        pos_y = _mask_coordinates(ys.to(boxes.dtype), boxes[:, 1], boxes[:, 3], height)
        pos_x = _mask_coordinates(xs.to(boxes.dtype), boxes[:, 0], boxes[:, 2], width)
        top, left = pos_y.floor(), pos_x.floor()
        frac_y, frac_x = pos_y - top, pos_x - left
        top, left = top.long(), left.long()
        value = torch.zeros_like(pos_y)
        # The 2x2 cells around each position; cells outside the mask are zero padding.
        for dy, weight_y in ((0, 1 - frac_y), (1, frac_y)):
            for dx, weight_x in ((0, 1 - frac_x), (1, frac_x)):
                cy, cx = top + dy, left + dx
                inside = (cy >= 0) & (cy < height) & (cx >= 0) & (cx < width)
                cell = self.masks[rows, cy.clamp(0, height - 1), cx.clamp(0, width - 1)]
                value += torch.where(inside, weight_y * weight_x * cell, 0.0)
        return value
