"""How far two panoptic id maps agree, whatever their segment numbering."""

import numpy as np


def matching_pixel_share(ids_a, ids_b):
    """Share of pixels in corresponding segments: each segment of ``ids_a`` is matched to the
    segment of ``ids_b`` it overlaps most (the two may number their segments differently)."""
    ids_a, ids_b = np.asarray(ids_a), np.asarray(ids_b)
    pairs = np.stack([ids_a.ravel(), ids_b.ravel()]).astype(np.int64)
    unique, counts = np.unique(pairs, axis=1, return_counts=True)
    best = {}
    for a, count in zip(unique[0].tolist(), counts.tolist()):
        best[a] = max(best.get(a, 0), count)
    return sum(best.values()) / ids_a.size
