"""The authors' released checkpoints: conversion, strict loading, and equal computation.

A checkpoint in the authors' layout (names and shapes of their modules, random values with
negative iABN weights) is converted by tools/convert_official_checkpoint.py, loaded strictly
into the model of the official config, and every part is compared with their computation
written out by hand in tests/authors_layout.py.
"""

import importlib.util
import re
from pathlib import Path

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from efficientps.engine.cpu_norms import cpu_safe_norms
from efficientps.modeling.anchors import MMDetV1AnchorGenerator

from .authors_layout import NUM_THINGS, AuthorsReference, authors_state_dict
from .helpers import CONFIGS, base_cfg, flat_config

ROOT = Path(__file__).resolve().parents[1]
OFFICIAL = {
    "cityscapes": CONFIGS / "Cityscapes-PanopticSegmentation" / "efficientps_b5_official.yaml",
    "kitti": CONFIGS / "KITTI-PanopticSegmentation" / "efficientps_b5_official.yaml",
}


def _load_tool():
    spec = importlib.util.spec_from_file_location(
        "convert_official_checkpoint", ROOT / "tools" / "convert_official_checkpoint.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def official_model(dataset="cityscapes"):
    cfg = base_cfg()
    cfg.merge_from_file(str(OFFICIAL[dataset]))
    cpu_safe_norms(cfg, world_size=1)
    return build_model(cfg).eval()


def close(ours, theirs, rtol=1e-4):
    """Equal to ``rtol`` of the reference's largest magnitude (float32 sums in another order)."""
    assert ours.shape == theirs.shape
    error = (ours - theirs).abs().max().item()
    scale = theirs.abs().max().item()
    assert error <= rtol * max(scale, 1e-6), f"max error {error:.3g} vs magnitude {scale:.3g}"


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """(their tensors, our model with the converted checkpoint, path, tool output)."""
    directory = tmp_path_factory.mktemp("official")
    theirs = authors_state_dict(torch.Generator().manual_seed(0))
    source = directory / "model.pth"
    torch.save({"state_dict": theirs, "meta": {"mmdet_version": "1.1.0", "epoch": 160}}, source)
    output = directory / "efficientps_b5_cityscapes_official.pth"
    tool = _load_tool()
    assert tool.main(["--input", str(source), "--output", str(output)]) == 0
    model = official_model()
    checkpoint = torch.load(output, map_location="cpu", weights_only=True)
    incompatible = model.load_state_dict(checkpoint["model"], strict=True)
    assert not incompatible.missing_keys and not incompatible.unexpected_keys
    return theirs, model, output


def test_conversion_covers_every_tensor_and_reports_groups(converted, capsys, tmp_path):
    theirs, model, output = converted
    # detectron2's checkpointer loads the file as users will (MODEL.WEIGHTS).
    fresh = official_model()
    DetectionCheckpointer(fresh).load(str(output))
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    # The report counts each group of their tensors.
    tool = _load_tool()
    source = tmp_path / "again.pth"
    torch.save({"state_dict": theirs, "meta": {}}, source)
    assert tool.main(["--input", str(source), "--output", str(tmp_path / "out.pth")]) == 0
    printed = capsys.readouterr().out
    backbone = sum(k.startswith("backbone.") for k in theirs)
    assert re.search(rf"EfficientNet +{backbone} tensors", printed), printed
    assert f"{len(theirs)} tensors in all" in printed
    negative = sum(int((v < 0).sum()) for k, v in theirs.items() if "bn" in k and "weight" in k)
    assert f"{negative} iABN weights were negative" in printed


def test_negative_iabn_weight_becomes_its_magnitude_plus_eps(converted):
    theirs, model, _ = converted
    weight = theirs["backbone.bn1.weight"]
    assert (weight < 0).any()
    ours = model.backbone.bottom_up.stem.norm.weight
    assert torch.allclose(ours, weight.abs() + 1e-3)
    head_weight = theirs["mask_head.convs.0.depthwise_conv.bn.weight"]
    assert torch.allclose(
        model.roi_heads.mask_head.mask_fcn1.depthwise.norm.weight, head_weight.abs() + 1e-5
    )
    # The stem (TF 'SAME' stride-2 conv + iABN with negative weights) by hand.
    image = torch.randn(1, 3, 33, 50, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        close(model.backbone.bottom_up.stem(image), AuthorsReference(theirs).stem(image))


def test_bottom_up_laterals_are_stored_coarsest_first(converted):
    theirs, model, _ = converted
    laterals = model.backbone.lateral_bottom_up
    for i in range(4):
        assert torch.equal(
            laterals[i].weight, theirs[f"neck.lateral_convs_bottom.{3 - i}.conv.weight"]
        )
        assert torch.equal(
            laterals[i].norm.bias, theirs[f"neck.lateral_convs_bottom.{3 - i}.bn.bias"]
        )


def test_backbone_fpn_and_semantic_logits_equal_the_authors(converted):
    theirs, model, _ = converted
    reference = AuthorsReference(theirs)
    image = torch.randn(1, 3, 64, 128, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        taps = model.backbone.bottom_up(image)
        their_taps = reference.efficientnet(image)
        for name, their_tap in zip(("res2", "res3", "res4", "res5"), their_taps):
            close(taps[name], their_tap)
        features = model.backbone(image)
        their_features = reference.two_way_fpn(their_taps)
        for name, their_level in zip(("p2", "p3", "p4", "p5"), their_features):
            close(features[name], their_level)
        logits, _ = model.sem_seg_head(features)
        close(logits, reference.semantic_head(their_features))
        objectness, deltas = model.proposal_generator.rpn_head(
            [features[f] for f in ("p2", "p3", "p4", "p5")]
        )
        for level, feature in enumerate(their_features):
            their_objectness, their_deltas = reference.rpn(feature)
            close(objectness[level], their_objectness)
            close(deltas[level], their_deltas)


def test_box_predictor_moves_background_last_and_drops_its_deltas(converted):
    theirs, model, _ = converted
    pooled = torch.randn(5, 256, 7, 7, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        scores, deltas = model.roi_heads.box_predictor(model.roi_heads.box_head(pooled))
    their_scores, their_deltas = AuthorsReference(theirs).box_head(pooled)
    assert scores.shape == (5, NUM_THINGS + 1) and deltas.shape == (5, 4 * NUM_THINGS)
    close(scores[:, :NUM_THINGS], their_scores[:, 1:])  # things, in their order
    close(scores[:, NUM_THINGS], their_scores[:, 0])  # background: theirs first, ours last
    close(deltas, their_deltas[:, 4:])  # their background regression dropped
    # Same class probabilities, so the same detections and scores.
    close(scores.softmax(-1)[:, :NUM_THINGS], their_scores.softmax(-1)[:, 1:])


def test_mask_logits_equal_the_authors_without_background(converted):
    theirs, model, _ = converted
    pooled = torch.randn(3, 256, 14, 14, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        logits = model.roi_heads.mask_head.layers(pooled)
    their_logits = AuthorsReference(theirs).mask_head(pooled)
    assert their_logits.shape[1] == NUM_THINGS + 1
    close(logits, their_logits[:, 1:])


def test_kitti_official_config_takes_the_same_checkpoint(converted, tmp_path):
    theirs, _, _ = converted
    source = tmp_path / "kitti.pth"
    torch.save({"state_dict": theirs, "meta": {}}, source)
    output = tmp_path / "kitti_official.pth"
    config = str(OFFICIAL["kitti"])
    assert (
        _load_tool().main(
            ["--input", str(source), "--output", str(output), "--config-file", config]
        )
        == 0
    )
    model = official_model("kitti")
    checkpoint = torch.load(output, map_location="cpu", weights_only=True)
    model.load_state_dict(checkpoint["model"], strict=True)


@pytest.mark.parametrize(
    "damage, message",
    [
        (
            lambda sd: sd.update({"neck.extra_conv.weight": torch.zeros(1)}),
            "unknown key 'neck.extra_conv.weight'",
        ),
        (lambda sd: sd.pop("neck.fpn_convs.2.bn.running_var"), "missing key"),
        (
            lambda sd: sd.update({"bbox_head.fc_cls.weight": torch.zeros(20, 1024)}),
            "shape mismatch for 'bbox_head.fc_cls.weight'",
        ),
    ],
    ids=["unknown", "missing", "shape"],
)
def test_wrong_checkpoints_fail_naming_the_key(converted, tmp_path, capsys, damage, message):
    theirs, _, _ = converted
    state_dict = dict(theirs)
    damage(state_dict)
    source = tmp_path / "damaged.pth"
    torch.save({"state_dict": state_dict}, source)
    output = tmp_path / "out.pth"
    assert _load_tool().main(["--input", str(source), "--output", str(output)]) == 1
    error = capsys.readouterr().err
    assert message in error and str(source) in error
    if message == "missing key":
        assert "backbone.output_convs.2.norm.running_var" in error
    assert not output.exists()


def test_other_files_are_refused_with_what_was_expected(tmp_path, capsys):
    detectron2_style = tmp_path / "model_final.pth"
    torch.save({"model": {"backbone.bottom_up.stem.weight": torch.zeros(1)}}, detectron2_style)
    assert (
        _load_tool().main(["--input", str(detectron2_style), "--output", str(tmp_path / "o")]) == 1
    )
    assert "backbone.conv_stem.weight" in capsys.readouterr().err
    assert _load_tool().main(["--input", str(tmp_path / "none.pth"), "--output", "o"]) == 1
    assert "no such file" in capsys.readouterr().err


def test_mmdet_v1_anchors_by_hand():
    generator = MMDetV1AnchorGenerator(
        sizes=[[32], [64]], aspect_ratios=[[0.5, 1.0, 2.0]], strides=[4, 8], offset=0.0
    )
    anchors = generator([torch.zeros(1, 1, 1, 2), torch.zeros(1, 1, 1, 1)])
    # Stride 4, size 32: centre (4 - 1) / 2 = 1.5 in "+1" pixels; ratio 0.5 (h/w): w = 45.25,
    # h = 22.63 -> x1 = round(1.5 - 22.13) = -21, x2 = round(1.5 + 22.13) = 24 (inclusive, so
    # 25 in continuous coordinates); ratio 1: [-14, 17] -> [-14, 18].
    expected = torch.tensor(
        [[-21.0, -9.0, 25.0, 13.0], [-14.0, -14.0, 18.0, 18.0], [-9.0, -21.0, 13.0, 25.0]]
    )
    assert torch.equal(anchors[0].tensor[:3], expected)
    assert torch.equal(anchors[0].tensor[3:6], expected + torch.tensor([4.0, 0.0, 4.0, 0.0]))
    # Stride 8, size 64, ratio 1: centre 3.5, [3.5 - 31.5, 3.5 + 31.5] = [-28, 35] -> [-28, 36].
    assert torch.equal(anchors[1].tensor[1], torch.tensor([-28.0, -28.0, 36.0, 36.0]))
    with pytest.raises(ValueError, match="OFFSET must be 0.0"):
        MMDetV1AnchorGenerator(sizes=[[32]], aspect_ratios=[[1.0]], strides=[4], offset=0.5)


def test_official_model_runs_end_to_end_on_converted_weights(converted):
    _, _, path = converted
    model = official_model()
    DetectionCheckpointer(model).load(str(path))
    with torch.no_grad():  # random regressions give degenerate boxes: anchors as proposals
        for layer in (
            model.proposal_generator.rpn_head.anchor_deltas,
            model.roi_heads.box_predictor.bbox_pred,
        ):
            layer.weight.zero_()
            layer.bias.zero_()
    model.roi_heads.box_predictor.test_score_thresh = 0.0
    image = torch.randint(0, 256, (3, 96, 160), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        (output,) = model([{"image": image.float(), "height": 96, "width": 160}])
    panoptic, segments = output["panoptic_seg"]
    assert panoptic.shape == (96, 160) and output["sem_seg"].shape == (19, 96, 160)
    assert len(output["instances"]) > 0
    assert {s["id"] for s in segments} == set(panoptic.unique().tolist()) - {0}


OFFICIAL_SWITCHES = {
    "MODEL.EFFICIENTNET.DS_PROJECT_ACTIVATION": True,
    "MODEL.EFFICIENTNET.NORM_MOMENTUM": 0.1,
    "MODEL.TWO_WAY_FPN.SEPARABLE": False,
    "MODEL.SEM_SEG_HEAD.HARD_PIXEL_RANKING": "batch",
    "MODEL.ANCHOR_GENERATOR.NAME": "MMDetV1AnchorGenerator",
    "MODEL.RPN.ACTIVATION": "relu",
    "MODEL.ROI_BOX_HEAD.ACTIVATION": "relu",
    "MODEL.ROI_BOX_HEAD.POOLER_TYPE": "ROIAlign",
    "MODEL.ROI_MASK_HEAD.POOLER_TYPE": "ROIAlign",
    "MODEL.ROI_MASK_HEAD.DECONV_ACTIVATION": "relu",
    "MODEL.EFFICIENTPS.FUSION_MASK_LOGIT_SCALE": 4.0,
    "MODEL.EFFICIENTPS.FUSION_PIXEL_RULE": "authors",
}
PAPER = {
    "cityscapes": CONFIGS
    / "Cityscapes-PanopticSegmentation"
    / "efficientps_b5_2wayfpn_bs16_1024x2048.yaml",
    "kitti": CONFIGS / "KITTI-PanopticSegmentation" / "efficientps_b5_2wayfpn_bs16_384x1280.yaml",
}


@pytest.mark.parametrize("dataset", ["cityscapes", "kitti"])
def test_official_configs_switch_exactly_the_listed_keys(dataset):
    configs = {}
    for name, path in (("paper", PAPER[dataset]), ("official", OFFICIAL[dataset])):
        cfg = base_cfg()
        cfg.merge_from_file(str(path))
        configs[name] = flat_config(cfg)
    changed = {
        key: value for key, value in configs["official"].items() if value != configs["paper"][key]
    }
    assert changed == OFFICIAL_SWITCHES


def test_readme_lists_every_switch_of_the_official_configs():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## The authors' released models", 1)[1].split("\n## ", 1)[0]
    for key in OFFICIAL_SWITCHES:
        node, _, leaf = key.rpartition(".")
        assert f"`{key}" in section or (f"{node}." in section and leaf in section), key


def test_fine_tuning_from_converted_weights_trains(converted):
    """One training step of the official model (b5, iABN, mmdet anchors) from the converted
    weights: every loss finite, every parameter gets a gradient."""
    from detectron2.utils.events import EventStorage

    from .helpers import training_sample

    _, _, path = converted
    torch.manual_seed(0)
    model = official_model()
    DetectionCheckpointer(model).load(str(path))
    model.train()
    with EventStorage():
        losses = model([training_sample(128, 160)])
        total = sum(losses.values())
        total.backward()
    assert set(losses) == {
        "loss_sem_seg", "loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg", "loss_mask"
    }  # fmt: skip
    assert torch.isfinite(total)
    assert all(p.grad is not None for p in model.parameters())
