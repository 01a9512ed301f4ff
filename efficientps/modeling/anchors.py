"""Anchors as mmdetection v1 makes them (the authors' code), for their released weights.

mmdetection v1 (and the Detectron it follows) places each level's base anchor at pixel
``(stride - 1) / 2`` in inclusive "+1" pixel coordinates and rounds its corners to whole pixels:
``x1 = round(c - (w - 1) / 2)``, ``x2 = round(c + (w - 1) / 2)`` with ``c = (stride - 1) / 2`` and
``w = size / sqrt(aspect_ratio)``. In detectron2's continuous coordinates that box is
``[x1, x2 + 1]``: centred half a stride in, like detectron2's OFFSET 0.5, but with whole-pixel
sides (a 0.5-ratio anchor of size 32 is 46 x 22 instead of 45.25 x 22.63). The RPN of the released
models regressed from these boxes, so their proposals need them.

Box decoding needs nothing of the kind: mmdetection v1's "+1" decoding of a box given in
inclusive coordinates gives exactly detectron2's decoding of the same box in continuous ones.
"""

from typing import List

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling.anchor_generator import ANCHOR_GENERATOR_REGISTRY, DefaultAnchorGenerator


def mmdet_v1_cell_anchors(stride, sizes, aspect_ratios):
    """(A, 4) continuous-coordinate anchors of one level, aspect ratio major (as mmdetection).

    Computed in float32 in mmdetection's order of operations, so that the rounding agrees.
    """
    base = float(stride)
    center = 0.5 * (base - 1)
    ratios = torch.tensor(aspect_ratios, dtype=torch.float32)
    scales = torch.tensor([size / base for size in sizes], dtype=torch.float32)
    h_ratios = torch.sqrt(ratios)
    w_ratios = 1 / h_ratios
    widths = (base * w_ratios[:, None] * scales[None, :]).view(-1)
    heights = (base * h_ratios[:, None] * scales[None, :]).view(-1)
    inclusive = torch.stack(
        [
            center - 0.5 * (widths - 1),
            center - 0.5 * (heights - 1),
            center + 0.5 * (widths - 1),
            center + 0.5 * (heights - 1),
        ],
        dim=-1,
    ).round()
    return inclusive + torch.tensor([0.0, 0.0, 1.0, 1.0])


@ANCHOR_GENERATOR_REGISTRY.register()
class MMDetV1AnchorGenerator(DefaultAnchorGenerator):
    """detectron2's DefaultAnchorGenerator with mmdetection v1's whole-pixel base anchors.

    Same sizes/aspect-ratio keys (MODEL.ANCHOR_GENERATOR.SIZES / ASPECT_RATIOS); the grid starts
    at 0 (the half-stride centre is part of the base anchors), so OFFSET must stay 0.0.
    """

    @configurable
    def __init__(self, *, sizes, aspect_ratios, strides, offset=0.0):
        """
        Args:
            sizes: anchor sizes in pixels, one list per level or one for all (detectron2's).
            aspect_ratios: height / width ratios, broadcast the same way.
            strides: the feature levels' strides (4..32 for p2..p5).
            offset: must be 0.0 (the base anchors already carry mmdetection's centre).
        """
        if offset != 0.0:
            raise ValueError(
                "MODEL.ANCHOR_GENERATOR.OFFSET must be 0.0 with MMDetV1AnchorGenerator (its base "
                f"anchors carry mmdetection's (stride - 1) / 2 centre), got {offset}"
            )
        super().__init__(sizes=sizes, aspect_ratios=aspect_ratios, strides=strides, offset=0.0)
        # Same count per level as the parent's; mmdetection's order (ratio major, then size).
        per_level = zip(self.strides, self._per_level(sizes), self._per_level(aspect_ratios))
        for buffer, (stride, level_sizes, level_ratios) in zip(self.cell_anchors, per_level):
            buffer.copy_(mmdet_v1_cell_anchors(stride, level_sizes, level_ratios))

    def _per_level(self, values):
        # detectron2's broadcasting: one flat list for every level, or one list per level.
        if not isinstance(values[0], (list, tuple)):
            values = [values]
        if len(values) == 1:
            values = list(values) * self.num_features
        return [list(v) for v in values]

    @classmethod
    def from_config(cls, cfg, input_shape: List[ShapeSpec]):
        return {
            "sizes": cfg.MODEL.ANCHOR_GENERATOR.SIZES,
            "aspect_ratios": cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS,
            "strides": [x.stride for x in input_shape],
            "offset": cfg.MODEL.ANCHOR_GENERATOR.OFFSET,
        }
