"""The learned fusion's detection quality: which detections deserve a segment.

The paper's fusion keeps a detection when its box score reaches 0.5. The box score knows the
class and the box, nothing of the mask or of what the semantic head sees there; on the learning
benchmark 19 of 39 missed instances had a good mask (IoU > 0.5) under a score < 0.5, and 14
segments were false positives (README, "Where the fusion loses PQ"). The learned fusion
replaces the box score by a quality q = sigmoid(w . f + b[class]) of five features per
detection, all read from what the fusion has anyway (as Mask Scoring R-CNN scores masks, here
with the semantic head's opinion too):

  0. logit of the box score (clipped to [1e-4, 1 - 1e-4]);
  1. mask confidence: mean sigmoid of the mask logits over the mask's cells (logit > 0);
  2. mask fill: the fraction of the M x M cells in the mask;
  3. semantic agreement: the fraction of the mask's cells where the semantic argmax (sampled at
     the cell centre's pixel) is the detection's class;
  4. relative size: log(sqrt(box area / image area)).

q then takes the box score's place in the fusion (threshold, order of the overlap filter).
With w = (1, 0, 0, 0, 0) and b = 0, q is the box score: the paper's fusion is the start.
Written once over the array namespace (``array_ops``) for the model and the runtime.
"""

NUM_FEATURES = 5
SCORE_CLIP = 1e-4


def quality_features(ops, sem_argmax, boxes, scores, channels, mask_logits):
    """(N, 5) float32 features of N detections.

    Args:
        ops: the array namespace (``array_ops.NUMPY`` or a ``TorchOps``).
        sem_argmax: (H, W) int64 semantic channel per pixel of the image the boxes are in.
        boxes: (N, 4) float32 (x0, y0, x1, y1) pixels. scores: (N,) box scores.
        channels: (N,) int64 semantic channel of each detection's class.
        mask_logits: (N, M, M) float32 mask logits of each detection's class.
    """
    height, width = sem_argmax.shape
    count, mask_size = mask_logits.shape[0], mask_logits.shape[-1]
    f32 = ops.float32
    clipped = ops.clip(scores, SCORE_CLIP, 1 - SCORE_CLIP)
    score_logit = ops.log(clipped / (1 - clipped))
    in_mask = ops.astype(mask_logits > 0, f32)
    cells = ops.sum(in_mask, (1, 2))
    mask_cells = ops.maximum(cells, ops.full((count,), 1, f32))
    confidence = ops.sum(ops.sigmoid(mask_logits) * in_mask, (1, 2)) / mask_cells
    fill = cells / (mask_size * mask_size)
    # The pixel under each cell centre: x0 + (j + 0.5) * (x1 - x0) / M, floored.
    centres = (ops.arange(0, mask_size, f32) + 0.5) / mask_size
    cols = boxes[:, 0:1] + centres[None, :] * (boxes[:, 2:3] - boxes[:, 0:1])
    rows = boxes[:, 1:2] + centres[None, :] * (boxes[:, 3:4] - boxes[:, 1:2])
    cols = ops.astype(ops.clip(ops.floor(cols), 0, width - 1), ops.int64)
    rows = ops.astype(ops.clip(ops.floor(rows), 0, height - 1), ops.int64)
    sampled = sem_argmax[rows[:, :, None], cols[:, None, :]]  # (N, M, M)
    agrees = ops.astype(sampled == channels[:, None, None], f32) * in_mask
    agreement = ops.sum(agrees, (1, 2)) / mask_cells
    box_area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    box_area = ops.maximum(box_area, ops.full((count,), 1, f32))
    size = 0.5 * ops.log(box_area / (height * width))
    columns = (score_logit, confidence, fill, agreement, size)
    return ops.stack([ops.astype(c, f32) for c in columns], axis=1)


def quality_logits(features, classes, feature_weights, class_bias):
    """features . feature_weights + class_bias[classes], (N,): the quality before the sigmoid
    (what the model's loss takes)."""
    return features @ feature_weights + class_bias[classes]


def quality(ops, features, classes, feature_weights, class_bias):
    """q = sigmoid(``quality_logits``), (N,) float32."""
    return ops.sigmoid(quality_logits(features, classes, feature_weights, class_bias))
