"""Test-time augmentation for EfficientPS: multi-scale + flip, merged before the fusion.

Per image, every augmented copy (detectron2's DatasetMapperTTA: TEST.AUG.MIN_SIZES, MAX_SIZE,
FLIP) goes through ``EfficientPS.inference`` twice, as detectron2's GeneralizedRCNNWithTTA does:
1. without the mask head: semantic logits, resized to the original size, flipped back and
   averaged; boxes mapped back to the original frame;
2. after the boxes of all copies are merged by class-wise NMS: the mask head on the merged boxes
   (given as ``detected_instances``), whose unflipped mask logits are averaged.
Only one copy's feature pyramid exists at a time (the price: each copy's backbone runs twice).
The paper's fusion then runs once on the averaged logits, as it would on a single forward pass.
"""

from contextlib import contextmanager

import torch
from detectron2.data.transforms import HFlipTransform
from detectron2.layers import batched_nms
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.modeling.test_time_augmentation import DatasetMapperTTA
from detectron2.structures import Boxes, Instances
from torch import nn
from torch.nn import functional as F


def _is_flipped(transforms):
    return any(isinstance(t, HFlipTransform) for t in transforms.transforms)


@contextmanager
def _mask_head_off(roi_heads):
    mask_on = roi_heads.mask_on
    roi_heads.mask_on = False
    try:
        yield
    finally:
        roi_heads.mask_on = mask_on


class EfficientPSWithTTA(nn.Module):
    """Wraps a trained EfficientPS; same inputs and outputs as the model at inference."""

    def __init__(self, cfg, model, tta_mapper=None):
        super().__init__()
        if hasattr(model, "module"):  # DistributedDataParallel
            model = model.module
        self.model = model
        self.tta_mapper = tta_mapper or DatasetMapperTTA(cfg)
        self.nms_thresh = cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST
        self.max_detections = cfg.TEST.DETECTIONS_PER_IMAGE

    def forward(self, batched_inputs):
        return [self._inference_one(x) for x in batched_inputs]

    @torch.no_grad()
    def _inference_one(self, dataset_dict):
        height, width = dataset_dict["height"], dataset_dict["width"]
        copies = []
        for augmented in self.tta_mapper(dataset_dict):
            transforms = augmented.pop("transforms")
            copies.append((augmented, transforms, _is_flipped(transforms)))
        sem, merged = self._semantic_and_boxes(copies, height, width)
        merged.pred_mask_logits = self._average_mask_logits(merged, copies)
        merged.pred_masks = merged.pred_mask_logits.sigmoid()
        instances, panoptic = self.model.fuse(sem, detector_postprocess(merged, height, width))
        return {"sem_seg": sem, "instances": instances, "panoptic_seg": panoptic}

    def _semantic_and_boxes(self, copies, height, width):
        """Averaged semantic logits at (height, width) and the NMS-merged boxes of all copies."""
        sem_sum = 0.0
        boxes, scores, classes = [], [], []
        with _mask_head_off(self.model.roi_heads):
            for augmented, transforms, flipped in copies:
                output = self.model.inference([augmented], do_postprocess=False)[0]
                sem = F.interpolate(
                    output["sem_seg"][None], (height, width), mode="bilinear", align_corners=False
                )[0]
                sem_sum = sem_sum + (sem.flip(-1) if flipped else sem)
                detections = output["instances"]
                original = transforms.inverse().apply_box(
                    detections.pred_boxes.tensor.cpu().numpy()
                )
                boxes.append(torch.as_tensor(original, dtype=torch.float32, device=sem.device))
                scores.append(detections.scores)
                classes.append(detections.pred_classes)
        merged = self._merge(torch.cat(boxes), torch.cat(scores), torch.cat(classes), height, width)
        return sem_sum / len(copies), merged

    def _merge(self, boxes, scores, classes, height, width):
        keep = batched_nms(boxes, scores, classes, self.nms_thresh)[: self.max_detections]
        merged = Instances((height, width))
        merged.pred_boxes = Boxes(boxes[keep])
        merged.scores = scores[keep]
        merged.pred_classes = classes[keep]
        return merged

    def _average_mask_logits(self, merged, copies):
        total = None
        for augmented, transforms, flipped in copies:
            boxes = transforms.apply_box(merged.pred_boxes.tensor.cpu().numpy())
            given = Instances(tuple(augmented["image"].shape[-2:]))
            given.pred_boxes = Boxes(torch.as_tensor(boxes, device=merged.scores.device))
            given.pred_classes = merged.pred_classes
            output = self.model.inference([augmented], [given], do_postprocess=False)[0]
            logits = output["instances"].pred_mask_logits
            logits = logits.flip(-1) if flipped else logits
            total = logits if total is None else total + logits
        return total / len(copies)
