"""EfficientPS' Mask R-CNN pieces: RPN head, box head, separable mask head, ROI heads."""

import pytest
import torch
from detectron2.layers import FrozenBatchNorm2d, NaiveSyncBatchNorm, ShapeSpec
from detectron2.modeling.proposal_generator import build_proposal_generator
from detectron2.modeling.roi_heads import build_box_head, build_roi_heads
from detectron2.structures import Boxes, ImageList, Instances
from detectron2.utils.events import EventStorage
from torch import nn

from efficientps.modeling.heads import (
    EfficientPSBoxHead,
    EfficientPSMaskHead,
    EfficientPSROIHeads,
    EfficientPSRPNHead,
)

from .helpers import (
    B5_CITYSCAPES_PARAMETERS,
    base_cfg,
    count_parameters,
    print_param_counts,
    synthetic_instances,
)

PYRAMID = {f"p{i}": ShapeSpec(channels=256, stride=2**i) for i in range(2, 6)}


def features(height, width, batch=1):
    return {
        name: torch.rand(batch, 256, -(-height // s.stride), -(-width // s.stride))
        for name, s in PYRAMID.items()
    }


def cityscapes_cfg(**rpn):
    cfg = base_cfg()  # Cityscapes setting: 8 thing classes
    for key, value in rpn.items():
        cfg.MODEL.RPN[key] = value
    return cfg


def test_parameter_counts_match_the_spec():
    cfg = cityscapes_cfg()
    rpn = build_proposal_generator(cfg, PYRAMID)
    roi = build_roi_heads(cfg, PYRAMID)
    assert isinstance(rpn.rpn_head, EfficientPSRPNHead)
    assert isinstance(roi, EfficientPSROIHeads)
    assert isinstance(roi.box_head, EfficientPSBoxHead)
    assert isinstance(roi.mask_head, EfficientPSMaskHead)
    counts = print_param_counts(
        {
            "RPN head (regular 3x3)": rpn,
            "box head + predictor (9 classes)": torch.nn.ModuleList(
                [roi.box_head, roi.box_predictor]
            ),
            "mask head (8 classes)": roi.mask_head,
        }
    )
    # RPN: 3x3 conv 256->256 + bias (590,080), objectness 256->3 (771), deltas 256->12 (3,084).
    # Box: FC 12544->1024 (12,846,080), FC 1024->1024 (1,049,600), classes 1024->9 (9,225),
    # class-specific deltas 1024->32 (32,800).
    # Mask: 4 separable 3x3 256->256 with BN (4 x 68,864), 2x2 deconv 256->256 (262,400),
    # logits 256->8 (2,056).
    expected = [590_080 + 771 + 3_084, 12_846_080 + 1_049_600 + 9_225 + 32_800,
                4 * 68_864 + 262_400 + 2_056]  # fmt: skip
    assert list(counts.values()) == expected
    assert expected[0] == B5_CITYSCAPES_PARAMETERS["proposal_generator"]
    assert expected[1] + expected[2] == B5_CITYSCAPES_PARAMETERS["roi_heads"]


def test_rpn_separable_switch():
    regular = build_proposal_generator(cityscapes_cfg(SEPARABLE=False), PYRAMID)
    sep = build_proposal_generator(cityscapes_cfg(SEPARABLE=True, NORM="BN"), PYRAMID)
    # regular 3x3 + bias: 590,080; separable (dw 2,304 + BN 512 + pw 65,536 + BN 512): 68,864
    assert count_parameters(regular) - count_parameters(sep) == 590_080 - 68_864


def test_rpn_head_shapes_on_odd_sizes():
    cfg = cityscapes_cfg()
    rpn = build_proposal_generator(cfg, PYRAMID)
    feats = features(200, 249)
    objectness, deltas = rpn.rpn_head([feats[f] for f in cfg.MODEL.RPN.IN_FEATURES])
    for obj, delta, f in zip(objectness, deltas, cfg.MODEL.RPN.IN_FEATURES):
        assert obj.shape[1:] == (3, *feats[f].shape[-2:])
        assert delta.shape[1:] == (12, *feats[f].shape[-2:])


def test_mask_head_gives_28x28_logits_per_class():
    cfg = cityscapes_cfg()
    head = build_roi_heads(cfg, PYRAMID).mask_head
    assert head.layers(torch.rand(5, 256, 14, 14)).shape == (5, 8, 28, 28)
    regular = cfg.clone()
    regular.MODEL.ROI_MASK_HEAD.SEPARABLE = False
    regular_head = build_roi_heads(regular, PYRAMID).mask_head
    # regular 3x3 + BN: 590,336 per conv; separable with two BNs: 68,864
    assert count_parameters(regular_head) - count_parameters(head) == 4 * (590_336 - 68_864)


def proposals_for(height, width, boxes):
    proposals = Instances((height, width))
    proposals.proposal_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
    proposals.objectness_logits = torch.ones(len(boxes))
    return proposals


def test_roi_heads_return_the_mask_logits_of_each_detections_class():
    torch.manual_seed(0)
    cfg = cityscapes_cfg()
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0  # random weights: keep every detection
    roi = build_roi_heads(cfg, PYRAMID).eval()
    # Mask logits that tell the classes apart: channel c is the constant c - 3.5 everywhere.
    class_logit = torch.arange(8, dtype=torch.float32) - 3.5
    with torch.no_grad():
        roi.mask_head.predictor.weight.zero_()
        roi.mask_head.predictor.bias.copy_(class_logit)
    boxes = [[10, 10, 80, 90], [40, 30, 150, 120], [100, 5, 200, 60]]
    with torch.no_grad():
        (detections,), _ = roi(None, features(160, 224), [proposals_for(160, 224, boxes)])
    classes = detections.pred_classes
    assert len(classes.unique()) >= 2
    logits = detections.pred_mask_logits
    assert logits.shape == (len(detections), 1, 28, 28)
    expected = class_logit[classes].view(-1, 1, 1, 1).expand_as(logits)
    assert torch.equal(logits, expected)  # logits (not probabilities) of the detection's class
    torch.testing.assert_close(detections.pred_masks, expected.sigmoid())


def test_roi_heads_train_and_every_parameter_gets_gradients():
    torch.manual_seed(0)
    cfg = cityscapes_cfg()
    rpn = build_proposal_generator(cfg, PYRAMID).train()
    roi = build_roi_heads(cfg, PYRAMID).train()
    feats = features(192, 256)
    images = ImageList(torch.zeros(1, 3, 192, 256), [(192, 256)])
    gt = synthetic_instances(
        192, 256, boxes=((20, 30, 120, 150), (130, 40, 250, 180)), classes=(0, 5)
    )
    with EventStorage():
        proposals, rpn_losses = rpn(images, feats, [gt])
        _, roi_losses = roi(images, feats, proposals, [gt])
    losses = {**rpn_losses, **roi_losses}
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg", "loss_mask"}
    sum(losses.values()).backward()
    for module in (rpn, roi):
        for name, p in module.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("norm", ["BN", "naiveSyncBN", "FrozenBN", "GN"])
def test_box_head_norm_is_the_one_the_config_names(norm):
    cfg = base_cfg()
    cfg.MODEL.ROI_BOX_HEAD.NORM = norm
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 40  # not a multiple of 32: GN takes 8 groups
    head = build_box_head(cfg, ShapeSpec(channels=16, height=7, width=7)).train()
    expected = {"BN": nn.BatchNorm2d, "naiveSyncBN": NaiveSyncBatchNorm,
                "FrozenBN": FrozenBatchNorm2d, "GN": nn.GroupNorm}[norm]  # fmt: skip
    assert type(head.fc1_norm) is expected and type(head.fc2_norm) is expected
    x = torch.randn(6, 16, 7, 7)
    out = head(x)
    assert out.shape == (6, 40)
    if norm == "BN":  # BatchNorm1d's function and statistics over the FC outputs
        reference = nn.BatchNorm1d(40).train()
        fc1 = head.fc1(x.flatten(1)).detach()
        expected_out = reference(fc1)
        torch.testing.assert_close(head.fc1_norm.running_mean, reference.running_mean)
        torch.testing.assert_close(head.fc1_norm.running_var, reference.running_var)
        head.eval()
        reference.eval()
        torch.testing.assert_close(
            head.fc1_norm(fc1[:, :, None, None]).flatten(1), reference(fc1), atol=1e-5, rtol=0
        )
        assert expected_out.shape == fc1.shape


def test_box_head_rejects_an_unknown_norm_naming_the_key():
    cfg = base_cfg()
    cfg.MODEL.ROI_BOX_HEAD.NORM = "LayerNorm"
    with pytest.raises(ValueError, match="MODEL.ROI_BOX_HEAD.NORM"):
        build_box_head(cfg, ShapeSpec(channels=16, height=7, width=7))
