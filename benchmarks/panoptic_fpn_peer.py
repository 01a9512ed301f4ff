"""detectron2's Panoptic FPN as the learning benchmark's peer, behind EfficientPS' data and
evaluator (benchmarks/learning.py, configs/panoptic_fpn_R_50_demo.yaml).

``PanopticFPNPeer`` is detectron2's ``PanopticFPN`` -- its backbone, heads, losses and its own
fusion (``combine_semantic_and_instance_outputs``) -- with an adapter on each side:

- in: our mapper's semantic targets are semantic channels (the 19 Cityscapes classes); Panoptic
  FPN's semantic head predicts the stuff classes and one "things" class 0, so the targets are
  mapped channel -> 0 for things, 1 + k for stuff class k (ignore stays ignore);
- out: its panoptic segments carry a thing index or 1 + stuff index as category_id; our
  evaluator reads semantic channels. Its semantic logits cover stuff + "things", so the
  19-channel "sem_seg" for mIoU is its panoptic output's class per pixel; void pixels take the
  semantic head's stuff class, or, where it says "things", the best-scoring instance mask's
  class there (else the best stuff class).

Run as ``python benchmarks/train_peer.py --config-file benchmarks/configs/... [train_net args]``.
"""

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, PanopticFPN
from torch.nn import functional as F

from efficientps.class_tables import PanopticClassTables


@META_ARCH_REGISTRY.register()
class PanopticFPNPeer(PanopticFPN):
    """detectron2's PanopticFPN between EfficientPS' mapper and evaluator."""

    @configurable
    def __init__(self, *, class_tables, ignore_value=255, **kwargs):
        super().__init__(**kwargs)
        self.class_tables = class_tables
        merged = torch.full((256,), ignore_value, dtype=torch.int64)
        merged[list(class_tables.thing_channels)] = 0
        merged[list(class_tables.stuff_channels)] = torch.arange(
            1, len(class_tables.stuff_channels) + 1
        )
        self.register_buffer("merged_class", merged, persistent=False)
        stuff = torch.tensor(class_tables.stuff_channels, dtype=torch.int64)
        self.register_buffer("stuff_channel", stuff, persistent=False)
        things = torch.tensor(class_tables.thing_channels, dtype=torch.int64)
        self.register_buffer("thing_channel", things, persistent=False)

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        ret["class_tables"] = PanopticClassTables.from_config(cfg)
        ret["ignore_value"] = cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE
        expected = len(ret["class_tables"].stuff_channels) + 1
        if cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES != expected:
            raise ValueError(
                f"MODEL.SEM_SEG_HEAD.NUM_CLASSES={cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES}; Panoptic "
                f"FPN predicts the stuff classes and one 'things' class: {expected}"
            )
        return ret

    def forward(self, batched_inputs):
        if self.training:
            merged = [
                dict(x, sem_seg=self.merged_class.cpu()[x["sem_seg"].long()])
                for x in batched_inputs
            ]
            return super().forward(merged)
        return [self._as_channels(out) for out in super().forward(batched_inputs)]

    def _as_channels(self, output):
        """Category ids and semantic logits in semantic channels (our evaluator's)."""
        panoptic, segments = output["panoptic_seg"]
        for segment in segments:
            if segment["isthing"]:
                segment["category_id"] = int(self.thing_channel[segment["category_id"]])
            else:
                segment["category_id"] = int(self.stuff_channel[segment["category_id"] - 1])
        semantic = self._semantic_channels(output, panoptic, segments)
        num_classes = self.class_tables.num_classes
        output["sem_seg"] = F.one_hot(semantic, num_classes).permute(2, 0, 1).float()
        return output

    def _semantic_channels(self, output, panoptic, segments):
        merged = output["sem_seg"].argmax(dim=0)
        best_stuff = output["sem_seg"][1:].argmax(dim=0)
        semantic = self.stuff_channel[torch.where(merged > 0, merged - 1, best_stuff)]
        instances = output["instances"]
        if len(instances):  # "things" pixels: the class of the best-scoring mask there
            masks = instances.pred_masks.bool()
            scores = torch.where(masks, instances.scores[:, None, None], -1.0)
            best_score, best = scores.max(dim=0)
            thing = self.thing_channel[instances.pred_classes[best]]
            semantic = torch.where((merged == 0) & (best_score >= 0), thing, semantic)
        segment_channel = torch.zeros(len(segments) + 1, dtype=torch.int64, device=merged.device)
        for segment in segments:
            segment_channel[segment["id"]] = segment["category_id"]
        return torch.where(panoptic > 0, segment_channel[panoptic], semantic)
