"""The EfficientPS meta-architecture end to end, on the CPU with random weights."""

from dataclasses import replace

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from efficientps import add_efficientps_config
from efficientps.class_tables import PanopticClassTables
from efficientps.modeling.meta_arch import EfficientPS

from .helpers import (
    B5_CITYSCAPES_PARAMETERS,
    CONFIGS,
    count_parameters,
    small_cfg,
    training_sample,
)

PAPER_PARAMETERS = 40.89e6


def test_cityscapes_b5_has_the_paper_parameter_count():
    cfg = get_cfg()
    add_efficientps_config(cfg)
    cfg.merge_from_file(
        str(
            CONFIGS
            / "Cityscapes-PanopticSegmentation"
            / "efficientps_b5_2wayfpn_bs16_1024x2048.yaml"
        )
    )
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)  # class tables from detectron2's Cityscapes panoptic metadata
    assert isinstance(model, EfficientPS)
    assert model.class_tables == PanopticClassTables(tuple(range(11)), tuple(range(11, 19)))
    parts = {name: count_parameters(getattr(model, name)) for name in B5_CITYSCAPES_PARAMETERS}
    parameters = count_parameters(model)
    print(f"EfficientPS-B5 Cityscapes: {parameters:,d} parameters (paper: 40.89 M)")
    assert parts == B5_CITYSCAPES_PARAMETERS
    assert parameters == sum(parts.values()) == 40_898_499
    assert abs(parameters - PAPER_PARAMETERS) / PAPER_PARAMETERS < 0.001


@pytest.mark.parametrize("size", [(200, 250), (200, 249)])
def test_inference_on_odd_sizes_resized_to_height_width(size):
    torch.manual_seed(0)
    cfg = small_cfg()
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0  # random weights: keep detections to fuse
    cfg.MODEL.EFFICIENTPS.FUSION_SCORE_THRESH = 0.0
    model = build_model(cfg).eval()
    inputs = [
        {"image": torch.rand(3, *size) * 255},
        {"image": torch.rand(3, *size) * 255, "height": 2 * size[0], "width": 2 * size[1]},
    ]
    with torch.no_grad():
        outputs = model(inputs)
    for out, expected in zip(outputs, [size, (2 * size[0], 2 * size[1])]):
        assert out["sem_seg"].shape == (19, *expected)
        assert out["instances"].image_size == expected
        panoptic, segments = out["panoptic_seg"]
        assert panoptic.shape == expected and panoptic.dtype == torch.int32
        ids = set(panoptic.unique().tolist()) - {0}
        assert ids == {s["id"] for s in segments}
        for s in segments:
            assert s["area"] == int((panoptic == s["id"]).sum())
            assert (s["category_id"] >= 11) == s["isthing"]
            if s["isthing"]:
                det = out["instances"][s["instance_index"]]
                assert s["category_id"] == 11 + int(det.pred_classes)
                assert s["score"] == pytest.approx(float(det.scores))


def test_training_step_with_and_without_instances():
    torch.manual_seed(0)
    model = build_model(small_cfg()).train()
    batch = [training_sample(200, 249), training_sample(200, 249, boxes=(), classes=())]
    with EventStorage():
        losses = model(batch)
        total = sum(losses.values())
        total.backward()
    expected = {
        "loss_sem_seg",
        "loss_rpn_cls",
        "loss_rpn_loc",
        "loss_cls",
        "loss_box_reg",
        "loss_mask",
    }
    assert set(losses) == expected
    assert torch.isfinite(total)
    for name, p in model.named_parameters():
        assert p.grad is not None, name


def test_learned_fusion_trains_and_the_paper_fusion_has_no_parameters():
    paper = build_model(small_cfg("paper"))
    assert not paper.panoptic_fusion.trainable
    assert not any("fusion" in name for name, _ in paper.named_parameters())

    torch.manual_seed(0)
    learned = build_model(small_cfg("learned")).train()
    with EventStorage():
        losses = learned([training_sample(192, 256)])
        sum(losses.values()).backward()
    assert "loss_panoptic" in losses and torch.isfinite(losses["loss_panoptic"])
    grad = learned.panoptic_fusion.learned.weights.grad
    assert grad is not None
    assert grad[[0, 5]].abs().sum() > 0  # the two classes present
    assert grad[[1, 2, 3, 4, 6, 7]].abs().sum() == 0


def test_learned_fusion_starts_as_the_paper_fusion():
    torch.manual_seed(0)
    cfg = small_cfg("learned")
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.MODEL.EFFICIENTPS.FUSION_SCORE_THRESH = 0.0
    learned = build_model(cfg).eval()
    paper = build_model(small_cfg("paper")).eval()
    paper.load_state_dict(learned.state_dict(), strict=False)
    paper.panoptic_fusion.params = replace(paper.panoptic_fusion.params, score_thresh=0.0)
    paper.roi_heads.box_predictor.test_score_thresh = 0.0
    image = [{"image": torch.rand(3, 128, 160) * 255}]
    with torch.no_grad():
        a, b = learned(image)[0]["panoptic_seg"], paper(image)[0]["panoptic_seg"]
    assert torch.equal(a[0], b[0]) and a[1] == b[1]


def test_class_table_mismatch_fails_clearly():
    cfg = small_cfg()
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 20
    with pytest.raises(ValueError, match="20 classes.*19"):
        build_model(cfg)
    cfg = small_cfg()
    cfg.MODEL.EFFICIENTPS.THING_CHANNELS = []
    cfg.MODEL.EFFICIENTPS.STUFF_CHANNELS = []
    cfg.DATASETS.TRAIN = ()
    cfg.DATASETS.TEST = ()
    with pytest.raises(ValueError, match="STUFF_CHANNELS"):
        build_model(cfg)
