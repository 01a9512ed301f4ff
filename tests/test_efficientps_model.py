"""The EfficientPS meta-architecture end to end, on the CPU with random weights."""

from dataclasses import replace

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from efficientps import add_efficientps_config
from efficientps.class_tables import PanopticClassTables
from efficientps.engine.optimizer import build_optimizer
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


def test_learned_fusion_trains_its_quality_and_leaves_the_network_as_the_paper_fusion():
    paper_cfg, learned_cfg = small_cfg("paper"), small_cfg("learned")
    models = []
    for cfg in (paper_cfg, learned_cfg):
        torch.manual_seed(0)
        models.append(build_model(cfg).train())
    paper, learned = models
    assert not paper.panoptic_fusion.trainable
    assert not any("fusion" in name for name, _ in paper.named_parameters())
    sample = training_sample(192, 256)
    for model, cfg in ((paper, paper_cfg), (learned, learned_cfg)):
        optimizer = build_optimizer(cfg, model)  # the paper's global-norm clip at 35
        torch.manual_seed(1)
        for _ in range(2):
            with EventStorage():
                losses = model([sample])
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
    assert "loss_fusion_quality" in losses and losses["loss_fusion_quality"] > 0
    quality = learned.panoptic_fusion.quality
    assert quality.feature_weights.grad.abs().sum() > 0
    # Its inputs are detached and it is outside the clip: the network is the paper fusion's.
    paper_state = paper.state_dict()
    for name, value in learned.state_dict().items():
        if not name.startswith("panoptic_fusion."):
            assert torch.equal(value, paper_state[name]), name


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
    # The quality starts as sigmoid(logit(box score)): the same ranking and segments.
    assert torch.equal(a[0], b[0])
    assert [{k: v for k, v in s.items() if k != "score"} for s in a[1]] == [
        {k: v for k, v in s.items() if k != "score"} for s in b[1]
    ]
    assert [s.get("score") for s in a[1]] == pytest.approx([s.get("score") for s in b[1]])


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


def test_learned_fusion_sees_candidates_below_the_detector_threshold_but_reports_its_own():
    torch.manual_seed(0)
    cfg = small_cfg("learned")  # SCORE_THRESH_TEST 0.5, candidates from 0.05
    cfg.MODEL.EFFICIENTPS.FUSION_MASK_LOGIT_SCALE = 1000.0  # random masks outvote random stuff
    model = build_model(cfg).eval()
    assert model.roi_heads.box_predictor.test_score_thresh == 0.05
    with torch.no_grad():
        model.panoptic_fusion.quality.class_bias.fill_(10.0)  # every candidate deserves a segment
        output = model([{"image": torch.rand(3, 128, 160) * 255}])[0]
    # Random weights: box scores about 1/9, all under 0.5, so no instance is reported...
    assert len(output["instances"]) == 0
    things = [s for s in output["panoptic_seg"][1] if s["isthing"]]
    # ...but the learned quality fused some, and says they are not rows of "instances".
    assert things and all(s["instance_index"] is None for s in things)
    assert all(s["score"] > 0.99 for s in things)
