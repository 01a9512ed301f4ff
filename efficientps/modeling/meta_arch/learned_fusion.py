"""The learned fusion's trainable part: a detection quality that replaces the box score.

What it computes is ``efficientps_runtime.detection_quality`` (five features per detection and a
logistic map; the runtime runs the same code). Here are its parameters and its loss.

Training: at every iteration the model's own inference detections on the training batch (the ROI
heads in eval mode on the RPN's proposals, without autograd) are labelled 1 when their pasted
mask matches a ground-truth instance of their class with IoU > 0.5 -- a true positive of PQ --
else 0, and the quality is trained on them with a binary cross entropy. Its inputs are detached:
no gradient reaches the network, so the backbone and the heads train exactly as with the paper's
fusion (same seed, same weights), and the quality's parameters stay out of the global gradient
norm clip (``detached_inputs``; engine/optimizer.py).
"""

import torch
from torch import nn
from torch.nn import functional as F

from efficientps_runtime.detection_quality import (
    NUM_FEATURES,
    quality,
    quality_features,
    quality_logits,
)

from .mask_paste import paste_mask_logits
from .torch_ops import TorchOps

# A detection is a true positive of PQ when its mask matches a ground-truth segment this well.
MATCH_IOU = 0.5
# Positives weigh twice in the loss, so that q = 0.5 (the fusion's threshold) is P(TP) = 1/3:
# a kept segment adds 1/2 to PQ's denominator TP + FP/2 + FN/2 whether it is a true positive
# (+1 TP, -1 FN) or not (+1 FP), and its IoU (~0.8) to the numerator only if it is, so keeping
# it pays when P(TP) * IoU / 0.5 > PQ, i.e. P(TP) > RQ / 2: about 1/3 to 0.4 at RQ 0.7-0.8.
# (An offline logistic fit on the learning benchmark's seed-1 training images, a one-off
# experiment not kept in the repository: weight 1 kept too few, PQ 68.1 as the paper's rule;
# weight 2 gave 69.9.)
POSITIVE_WEIGHT = 2.0


class LearnedDetectionQuality(nn.Module):
    """Feature weights (5,) and per-thing-class bias (T,), starting at the box score."""

    # Its gradients come from detached inputs only: not part of the network's gradient norm.
    detached_inputs = True

    def __init__(self, num_things, *, loss_weight=1.0):
        super().__init__()
        start = torch.zeros(NUM_FEATURES)
        start[0] = 1.0  # q = sigmoid(logit(box score)) = the box score
        self.feature_weights = nn.Parameter(start)
        self.class_bias = nn.Parameter(torch.zeros(num_things))
        self.loss_weight = loss_weight

    def features(self, sem_argmax, detections, channels):
        """(N, 5) features of ``detections`` (pred_boxes, scores, pred_mask_logits) on an
        image whose semantic argmax is ``sem_argmax``; ``channels`` their semantic channels."""
        with torch.no_grad():
            return quality_features(
                TorchOps(sem_argmax.device),
                sem_argmax,
                detections.pred_boxes.tensor.float(),
                detections.scores.float(),
                channels,
                detections.pred_mask_logits[:, 0].float(),
            )

    def forward(self, features, classes):
        """(N,) quality in [0, 1] of detections with these features and thing classes."""
        return quality(
            TorchOps(features.device), features, classes, self.feature_weights, self.class_bias
        )

    def to_metadata(self):
        """metadata.json's "quality": the learned numbers."""
        return {
            "feature_weights": self.feature_weights.detach().cpu().tolist(),
            "class_bias": self.class_bias.detach().cpu().tolist(),
        }

    def loss(self, sem_logits, detections, image_sizes, gt_instances, thing_channels):
        """Binary cross entropy of the quality of each image's detections against "is a true
        positive" (mask IoU > 0.5 with a ground-truth instance of its class).

        Args:
            sem_logits: (B, C, H, W) semantic logits of the padded batch (detached here).
            detections: per image, inference ``Instances`` (pred_boxes, scores, pred_classes,
                pred_mask_logits) in the image's frame.
            image_sizes: per image (h, w). gt_instances: per image, gt_classes and gt_masks.
            thing_channels: (T,) int64 semantic channel of each thing class.
        """
        logits, labels = [], []
        for sem, dets, (height, width), gt in zip(
            sem_logits, detections, image_sizes, gt_instances
        ):
            if len(dets) == 0:
                continue
            with torch.no_grad():
                ops = TorchOps(sem.device)
                sem_argmax = ops.argmax(sem[:, :height, :width].detach(), axis=0)
                features = self.features(sem_argmax, dets, thing_channels[dets.pred_classes])
                labels.append(self._true_positive(dets, gt, height, width))
            logits.append(
                quality_logits(features, dets.pred_classes, self.feature_weights, self.class_bias)
            )
        if not logits:  # no detection in the batch: a zero that keeps the parameters in the graph
            return {"loss_fusion_quality": self.feature_weights.sum() * 0.0}
        positive_weight = torch.tensor(POSITIVE_WEIGHT, device=self.class_bias.device)
        loss = F.binary_cross_entropy_with_logits(
            torch.cat(logits), torch.cat(labels), pos_weight=positive_weight
        )
        return {"loss_fusion_quality": loss * self.loss_weight}

    @staticmethod
    def _true_positive(detections, gt, height, width):
        """(N,) float 1.0 where a detection's mask matches a ground-truth instance of its class."""
        gt_masks = gt.gt_masks.tensor[:, :height, :width].flatten(1).float()
        if len(gt_masks) == 0:
            return torch.zeros(len(detections), device=gt_masks.device)
        pasted = paste_mask_logits(
            detections.pred_mask_logits, detections.pred_boxes.tensor, height, width
        )
        masks = (pasted > 0).flatten(1).float()
        intersection = masks @ gt_masks.T
        union = masks.sum(1)[:, None] + gt_masks.sum(1)[None, :] - intersection
        iou = intersection / union.clamp(min=1)
        same_class = detections.pred_classes[:, None] == gt.gt_classes[None, :]
        return ((iou * same_class).max(dim=1).values > MATCH_IOU).float()
