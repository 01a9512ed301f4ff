"""The COCO-panoptic encoding of segment ids as colours: id = R + 256 G + 256^2 B.

NumPy only, so that the offline PQ command and the data pipeline share it without importing
each other's dependencies.
"""

import numpy as np


def id_to_rgb(ids):
    """(..., 3) uint8 RGB of integer ids below 2^24."""
    ids = np.asarray(ids, np.int64)
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)


def rgb_to_id(rgb, dtype=np.int64):
    """Ids of (..., 3) RGB values, as ``dtype`` (int64, or uint32 as read_panoptic_png gives)."""
    rgb = rgb.astype(dtype)
    return rgb[..., 0] | (rgb[..., 1] << 8) | (rgb[..., 2] << 16)
