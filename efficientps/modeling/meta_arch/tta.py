"""Test-time augmentation for EfficientPS: multi-scale + flip, merged before the fusion.

Per image, every augmented copy (detectron2's DatasetMapperTTA: TEST.AUG.MIN_SIZES, MAX_SIZE,
FLIP) goes through the backbone once. Semantic logits are resized to the original size, flipped
back and averaged. Detections of all copies are mapped back to the original frame and merged by
class-wise NMS; the mask head then runs on the merged boxes in every copy and the (unflipped)
mask logits are averaged. The paper's fusion then runs once on these averaged logits, as it
would on a single forward pass.
"""

import torch
from detectron2.data.transforms import HFlipTransform
from detectron2.layers import batched_nms
from detectron2.modeling.postprocessing import detector_postprocess, sem_seg_postprocess
from detectron2.modeling.test_time_augmentation import DatasetMapperTTA
from detectron2.structures import Boxes, Instances
from torch import nn


def _is_flipped(transforms):
    return any(isinstance(t, HFlipTransform) for t in transforms.transforms)


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
        model = self.model
        height, width = dataset_dict["height"], dataset_dict["width"]
        copies = []
        sem_sum = 0.0
        boxes, scores, classes = [], [], []
        for augmented in self.tta_mapper(dataset_dict):
            transforms = augmented.pop("transforms")
            flipped = _is_flipped(transforms)
            images = model.preprocess_image([augmented])
            with model.inference_autocast():  # MODEL.EFFICIENTPS.INFERENCE_DTYPE
                features = model.backbone(images.tensor)
                sem_logits, _ = model.sem_seg_head(features)
                proposals, _ = model.proposal_generator(images, features, None)
                detections = model.roi_heads.predict_boxes(features, proposals)[0]
            sem = sem_seg_postprocess(sem_logits[0].float(), images.image_sizes[0], height, width)
            sem_sum = sem_sum + (sem.flip(-1) if flipped else sem)
            original = transforms.inverse().apply_box(detections.pred_boxes.tensor.cpu().numpy())
            boxes.append(torch.as_tensor(original, dtype=torch.float32, device=sem.device))
            scores.append(detections.scores.float())
            classes.append(detections.pred_classes)
            copies.append((features, images.image_sizes[0], transforms, flipped))

        merged = self._merge(torch.cat(boxes), torch.cat(scores), torch.cat(classes), height, width)
        merged.pred_mask_logits = self._average_mask_logits(merged, copies)
        merged.pred_masks = merged.pred_mask_logits.sigmoid()
        sem = sem_sum / len(copies)
        instances = detector_postprocess(merged, height, width)
        return {
            "sem_seg": sem,
            "instances": instances,
            "panoptic_seg": model.panoptic_fusion(sem, instances),
        }

    def _merge(self, boxes, scores, classes, height, width):
        keep = batched_nms(boxes, scores, classes, self.nms_thresh)[: self.max_detections]
        merged = Instances((height, width))
        merged.pred_boxes = Boxes(boxes[keep])
        merged.scores = scores[keep]
        merged.pred_classes = classes[keep]
        return merged

    def _average_mask_logits(self, merged, copies):
        total = None
        for features, _, transforms, flipped in copies:
            boxes = transforms.apply_box(merged.pred_boxes.tensor.cpu().numpy())
            boxes = Boxes(torch.as_tensor(boxes, device=merged.scores.device))
            with self.model.inference_autocast():
                logits = self.model.roi_heads.mask_logits_for_boxes(
                    features, [boxes], [merged.pred_classes]
                )[0].float()
            logits = logits.flip(-1) if flipped else logits
            total = logits if total is None else total + logits
        return total / len(copies)
