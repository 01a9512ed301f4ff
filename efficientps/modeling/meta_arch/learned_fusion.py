"""A trainable variant of the panoptic fusion ("learned"), next to the paper's ("paper").

Per thing class c it learns an affine map of each input of the fused logit,
``ML_A' = w_a[c] ML_A + b_a[c]`` and ``ML_B' = w_b[c] ML_B + b_b[c]``, initialised to the
identity so that training starts from the paper's fusion. It is trained end-to-end with a
panoptic cross entropy over the stacked [stuff logits, fused logits of the ground-truth
instances] against the ground-truth panoptic ids, as UPSNet's panoptic head is.
"""

import torch
from torch import nn
from torch.nn import functional as F

from .mask_paste import paste_mask_logits
from .panoptic_fusion import fused_instance_logits

# Logit given to an instance outside its box, so that it never claims those pixels.
OUTSIDE_BOX_LOGIT = -1e4


class LearnedPanopticFusion(nn.Module):
    """The learned fusion's per-class weights [w_a, b_a, w_b, b_b] and its panoptic loss."""

    def __init__(self, num_things, *, loss_weight=1.0, loss_scale=0.25, ignore_value=255):
        """
        Args:
            num_things: thing classes (one row of four weights each).
            loss_weight: multiplies the panoptic cross entropy.
            loss_scale: the loss is computed at this fraction of the input size (memory).
            ignore_value: the semantic targets' ignore label (void, crowd, padding).
        """
        super().__init__()
        identity = torch.tensor([1.0, 0.0, 1.0, 0.0])
        self.weights = nn.Parameter(identity.repeat(num_things, 1))
        self.loss_weight = loss_weight
        self.loss_scale = loss_scale
        self.ignore_value = ignore_value

    def instance_weights(self, classes):
        """(N, 4) [w_a, b_a, w_b, b_b] for detections of thing indices ``classes``."""
        return self.weights[classes]

    def loss(self, sem_logits, gt_mask_logits, targets, *, stuff_channels, thing_channels):
        """Panoptic cross entropy of the fused logits of ground-truth instances.

        Args:
            sem_logits: (B, C, H, W) semantic logits at the padded input size.
            gt_mask_logits: per image, (N_i, 28, 28) mask logits of its ground-truth instances
                (their class), predicted by the mask head on the ground-truth boxes.
            targets: per image, dict with "sem_seg" (H, W) int64 channels/ignore and
                "instances" (gt_boxes, gt_classes = thing indices, gt_masks).
        """
        stuff_channels = torch.as_tensor(stuff_channels, device=sem_logits.device)
        thing_channels = torch.as_tensor(thing_channels, device=sem_logits.device)
        sem_small = F.interpolate(
            sem_logits, scale_factor=self.loss_scale, mode="bilinear", align_corners=False
        )
        height, width = sem_small.shape[-2:]
        losses = []
        for sem, mask_logits, target in zip(sem_small, gt_mask_logits, targets):
            instances = target["instances"]
            boxes = instances.gt_boxes.tensor * self.loss_scale
            classes = instances.gt_classes
            ml_a = paste_mask_logits(mask_logits, boxes, height, width)
            inside = paste_mask_logits(torch.ones_like(mask_logits), boxes, height, width) > 0
            ml_b = sem[thing_channels[classes]] * inside
            w = self.instance_weights(classes)[:, :, None, None]
            fused = fused_instance_logits(w[:, 0] * ml_a + w[:, 1], w[:, 2] * ml_b + w[:, 3])
            fused = torch.where(inside, fused, torch.full_like(fused, OUTSIDE_BOX_LOGIT))
            logits = torch.cat([sem[stuff_channels], fused], dim=0)
            panoptic = self._panoptic_target(target, stuff_channels, (height, width))
            # At the loss scale an instance's pixels can fall just outside its pasted box, where
            # its logit is OUTSIDE_BOX_LOGIT; those pixels say nothing about the fusion.
            instance = panoptic - len(stuff_channels)
            is_instance = (instance >= 0) & (panoptic != self.ignore_value)
            rows = instance.clamp(min=0, max=max(len(classes) - 1, 0))
            if len(classes):
                outside = is_instance & ~inside.gather(0, rows[None]).squeeze(0)
                panoptic = torch.where(
                    outside, torch.full_like(panoptic, self.ignore_value), panoptic
                )
            if (panoptic != self.ignore_value).any():  # else the mean would be 0 / 0
                losses.append(
                    F.cross_entropy(logits[None], panoptic[None], ignore_index=self.ignore_value)
                )
        # Not NaN-cleaned: a diverging fusion must trip the trainer's non-finite-loss stop.
        loss = torch.stack(losses).mean() if losses else sem_logits.sum() * 0.0
        return {"loss_panoptic": loss * self.loss_weight}

    def _panoptic_target(self, target, stuff_channels, size):
        """Per pixel: stuff index k, S + instance index, or ignore (void, crowd, thing w/o mask)."""
        sem = target["sem_seg"]
        size_of_table = max(int(sem.max()), int(stuff_channels.max()), self.ignore_value) + 1
        stuff_index = torch.full(
            (size_of_table,), self.ignore_value, dtype=torch.int64, device=sem.device
        )
        stuff_index[stuff_channels] = torch.arange(len(stuff_channels), device=sem.device)
        panoptic = stuff_index[sem.clamp(min=0)]
        masks = target["instances"].gt_masks.tensor
        if len(masks):
            covered = masks.any(dim=0)
            instance_index = masks.to(torch.int64).argmax(dim=0) + len(stuff_channels)
            panoptic = torch.where(covered, instance_index, panoptic)
        panoptic = panoptic[None, None].float()
        return F.interpolate(panoptic, size=size, mode="nearest")[0, 0].long()
