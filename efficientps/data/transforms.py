"""Augmentations the paper uses that detectron2 does not have as such."""

import numpy as np
from detectron2.data import transforms as T


class RandomScale(T.Augmentation):
    """Resize the image by a factor drawn uniformly from [min_scale, max_scale] (paper: 0.5-2).

    Unlike detectron2's ResizeScale, the factor is relative to the image itself, not to a
    target size, so it means the same on Cityscapes, KITTI and Vistas.
    """

    def __init__(self, min_scale, max_scale):
        super().__init__()
        if not 0 < min_scale <= max_scale:
            raise ValueError(f"need 0 < min_scale <= max_scale, got {min_scale}, {max_scale}")
        self.min_scale, self.max_scale = min_scale, max_scale

    def get_transform(self, image):
        height, width = image.shape[:2]
        scale = np.random.uniform(self.min_scale, self.max_scale)
        new_h, new_w = max(1, int(round(height * scale))), max(1, int(round(width * scale)))
        return T.ResizeTransform(height, width, new_h, new_w)
