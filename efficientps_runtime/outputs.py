"""The files ``python -m efficientps.demo`` writes, from a runtime prediction.

``NAME_panoptic.png`` (COCO-panoptic RGB encoding, id = R + 256 G + 256^2 B),
``NAME_panoptic.json`` ({"segments_info": [...]} in the dataset's category ids) and
``NAME_vis.png`` (the segments over the image in their class colours, outlined and labelled; an
OpenCV drawing, not detectron2's Visualizer).
"""

import json

import cv2
import numpy as np

from efficientps_pq.panoptic_ids import id_to_rgb


def write_prediction(prefix, image_bgr, panoptic, segments_info, classes_by_id):
    """Write the three files for one image; returns the visualisation (BGR uint8)."""
    cv2.imwrite(prefix + "_panoptic.png", id_to_rgb(panoptic)[..., ::-1])
    with open(prefix + "_panoptic.json", "w") as f:
        json.dump({"segments_info": segments_info}, f, indent=1)
    vis = draw_panoptic(image_bgr, panoptic, segments_info, classes_by_id)
    cv2.imwrite(prefix + "_vis.png", vis)
    return vis


def _colour(entry, segment_id):
    if entry.get("color"):
        return np.array(entry["color"], np.float32)
    rng = np.random.default_rng(entry["dataset_id"] * 7919 + segment_id)
    return rng.integers(64, 256, 3).astype(np.float32)


def draw_panoptic(image_bgr, panoptic, segments_info, classes_by_id, alpha=0.5):
    """Each segment blended in its class colour (things a little varied per instance), with
    its outline and, for segments of at least 0.1% of the image, its class name."""
    vis = image_bgr.astype(np.float32)
    overlay = vis.copy()
    labels = []
    for s in segments_info:
        mask = panoptic == s["id"]
        if not mask.any():
            continue
        rgb = _colour(classes_by_id[s["category_id"]], s["id"])
        if s["isthing"]:
            rgb = np.clip(rgb + (s["id"] % 5 - 2) * 12, 0, 255)
        overlay[mask] = rgb[::-1]
        if mask.sum() >= 0.001 * mask.size:
            ys, xs = np.nonzero(mask)
            labels.append((s["category_name"], int(np.median(xs)), int(np.median(ys))))
    vis = (1 - alpha) * vis + alpha * overlay
    edges = np.zeros(panoptic.shape, bool)
    edges[:-1] |= panoptic[:-1] != panoptic[1:]
    edges[:, :-1] |= panoptic[:, :-1] != panoptic[:, 1:]
    vis[edges] = 255
    vis = vis.astype(np.uint8)
    scale = max(0.3, min(vis.shape[:2]) / 800)
    for name, x, y in labels:
        cv2.putText(vis, name, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3)
        cv2.putText(vis, name, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1)
    return vis
