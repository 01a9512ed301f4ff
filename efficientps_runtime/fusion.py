"""The runtime's panoptic fusion: ``fusion_core`` (shared with the PyTorch model) on NumPy.

Settings and the learned quality come from metadata.json's "fusion" (written by the exporter
from the model's own ``FusionParams`` and parameters), so the runtime fuses as the model does.
"""

import numpy as np

from .array_ops import NUMPY
from .fusion_core import fuse_detections
from .fusion_params import FusionParams


class PanopticFusion:
    """Semantic logits + detections of one image -> (panoptic ids, segments_info).

    Args (the metadata's "fusion" and class tables):
        stuff_channels, thing_channels: semantic channel of each stuff / thing class.
        params: the fusion's settings (``FusionParams``, as the PyTorch model's).
        quality: the learned fusion's {"feature_weights", "class_bias"}, or None (paper).
    """

    def __init__(self, *, stuff_channels, thing_channels, params=None, quality=None):
        self.stuff_channels = [int(c) for c in stuff_channels]
        self.thing_channels = [int(c) for c in thing_channels]
        self.params = params or FusionParams()
        self.quality_weights = None
        if quality is not None:
            self.quality_weights = (
                np.asarray(quality["feature_weights"], np.float32),
                np.asarray(quality["class_bias"], np.float32),
            )

    @classmethod
    def from_metadata(cls, metadata):
        params, quality = FusionParams.from_metadata(
            metadata["fusion"], len(metadata["thing_channels"])
        )
        return cls(
            stuff_channels=metadata["stuff_channels"],
            thing_channels=metadata["thing_channels"],
            params=params,
            quality=quality,
        )

    def __call__(self, sem_logits, boxes, scores, classes, mask_logits):
        """Fuse (C, H, W) semantic logits with detections at the same size (mask_logits
        (N, M, M) of each detection's class).

        Returns (panoptic (H, W) int32 ids, segments_info with "id", "category_id" (semantic
        channel), "isthing", "area", and "score", "instance_index" (detection row) for things).
        """
        panoptic, segments = fuse_detections(
            NUMPY,
            np.asarray(sem_logits, np.float32),
            np.asarray(boxes, np.float32).reshape(-1, 4),
            np.asarray(scores, np.float32),
            np.asarray(classes, np.int64),
            np.asarray(mask_logits, np.float32),
            stuff_channels=self.stuff_channels,
            thing_channels=self.thing_channels,
            params=self.params,
            quality_weights=self.quality_weights,
        )
        return panoptic.astype(np.int32), segments
